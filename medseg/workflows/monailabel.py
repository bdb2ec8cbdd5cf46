"""The REST shapes of MONAI Label that 3D Slicer's MONAI Label module uses, on ``medseg.serve``'s cases.

Own routes rather than a MONAI Label app: ``monailabel`` pins its own MONAI and torch ranges, and these few
shapes are all the module needs to point at ``medseg.serve`` (the tests drive them with MONAI Label 0.8.5's own
client, ``monailabel.client.MONAILabelClient``, the code the Slicer module calls):

- ``GET /info/``: the app, its labels and one model (``deepedit`` for a click-guided bundle, else ``segmentation``)
- ``GET /datastore/?output=all``: the cases under ``--input-dir`` and the uploaded images (``objects``: id -> image
  and saved labels)
- ``PUT /datastore/?image=ID``: form field ``file`` (a NIfTI/NRRD/MHA file, size-limited): the image as a case of
  that id (kept while the server runs; ``--input-dir`` is never written)
- ``GET /datastore/image?image=ID``: the image file (a NIfTI/NRRD/MHA file; DICOM series are not served)
- ``POST /activelearning/{strategy}``: the next case without a saved label (``medseg.rank``'s order when given)
- ``POST /infer/{model}?image=ID``: the mask as NIfTI; form field ``params`` (JSON) may hold clicks per label name
  (``{"liver": [[i, j, k], ...], "background": [...]}``, voxel indices as Slicer sends them), applied in order.
  As MONAI Label answers: a multipart body with ``params`` (JSON: ``label_names``, ``latencies``) and the mask
  file; ``&output=image`` the file alone, ``&output=json`` the JSON alone
- ``PUT /datastore/label?image=ID``: form field ``label`` (a NIfTI file): the corrected label, saved into
  ``--output-dir`` as ``<id>_seg.nii.gz`` (atomically; the id is a listed case name only)
- ``GET /auth/`` and ``POST /auth/token``: whether the server needs a token (``--token``), and the token itself
  for the password equal to it (any user name), so the module's login gives it the bearer token

Multipart bodies are parsed with the standard library's ``email`` parser (FastAPI's form parsing needs the
``python-multipart`` package, which nothing else here uses).
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import json
import secrets
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from medseg import __version__
from medseg.data.check import read_header
from medseg.data.formats import IMAGE_SUFFIXES as ALL_SUFFIXES, NIFTI_SUFFIXES, has_suffix
from medseg.data.labelmaps import write_label_nifti
from medseg.data.pictures import stored_values
from medseg.data.uploads import check_self_contained
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text
from medseg.workflows.interact import (CaseSession, check_case_name, check_targets, inside, is_number,
                                      save_dicom_seg)
from medseg.workflows.predict import check_input, stored_value_map

MODEL = "medseg"
#: the image files ``PUT /datastore/`` takes (a DICOM series goes through the page's zip upload)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def form_parts(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (file name or None, bytes)`` of a ``multipart/form-data`` body (``{}`` for any other body)."""
    if not content_type.startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            filename = part.get_param("filename", header="content-disposition")
            fields[str(name)] = (str(filename) if filename else None, part.get_payload(decode=True) or b"")
    return fields


def form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """``name -> bytes`` of a ``multipart/form-data`` body (``{}`` for any other body)."""
    return {name: data for name, (_, data) in form_parts(content_type, body).items()}


def multipart(fields: dict[str, tuple[str | None, str, bytes]]) -> Response:
    """A ``multipart/form-data`` response: ``name -> (file name or None, content type, bytes)``, as MONAI Label's
    infer answers (its client keeps the parts that have a file name as files, the others as form fields)."""
    boundary = f"medseg-{secrets.token_hex(16)}"
    body = bytearray()
    for name, (filename, kind, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n").encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return Response(bytes(body), media_type=f"multipart/form-data; boundary={boundary}")


def info_payload(bundle_name: str, names: dict[str, int], guided: bool, total: int,
                 dimension: int = 3) -> dict[str, Any]:
    """MONAI Label's ``/info/``: the app, its labels (name -> value, background left out) and the one model
    (``dimension``: its network's, 2 or 3)."""
    labels = {k: v for k, v in names.items() if v != 0}
    return {"name": f"medseg ({bundle_name})", "description": "medseg.serve", "version": __version__,
            "labels": list(labels),
            "models": {MODEL: {"type": "deepedit" if guided else "segmentation", "labels": labels,
                               "dimension": dimension, "description": f"medseg bundle {bundle_name}"}},
            "trainers": {}, "strategies": {"uncertainty": {"description": "medseg.rank order, unsaved first"}},
            "scoring": {}, "train_stats": {}, "datastore": {"total": total}}


def apply_clicks(session: CaseSession, params: Any, names: dict[str, int]) -> None:
    """Apply MONAI Label's clicks (``params``: label name -> voxel indices) in order; a background click takes
    away the class under it; other params (device, result_extension, ...) are ignored."""
    if not isinstance(params, dict):
        raise MedsegError(f"params: a JSON object (label name -> clicks), not {type(params).__name__}")
    for key, points in params.items():
        if key not in names:
            if isinstance(points, list) and points:  # clicks under a name the bundle does not have: not dropped
                raise MedsegError(f"params {key!r}: not a label of this bundle ({', '.join(names)}); its clicks"
                                  " were not applied")
            continue  # device, result_extension, ...: MONAI Label's other params
        if not isinstance(points, list):
            raise MedsegError(f"params {key!r}: a list of [i, j, k] voxel indices, not {type(points).__name__}")
        dims = len(session.shape)  # a 2D picture's clicks are [i, j] (a third index, as Slicer sends, must be 0)
        axes = "[i, j, k]" if dims == 3 else "[i, j]"
        for point in points:
            if not (isinstance(point, list) and len(point) >= dims and all(is_number(v) for v in point[:dims])):
                raise MedsegError(f"params {key!r}: a click {point!r} is not {axes} voxel indices")
            if dims == 2 and len(point) >= 3 and is_number(point[2]) and float(point[2]) != 0:
                raise MedsegError(f"params {key!r}: click {point[:3]} is off the 2D image's one slice (k must be 0)")
            voxel = [float(v) for v in point[:dims]]
            if any(not 0 <= v < n for v, n in zip(voxel, session.shape)):
                raise MedsegError(f"params {key!r}: click {point[:dims]} is outside the image {list(session.shape)}")
            if names[key] != 0:
                session.click(voxel, names[key], positive=True)
            else:
                # the voxel the point lies in (19.6 of 20 slices is the last one, 19, not a 20th)
                under = int(session.labels[tuple(min(int(round(v)), n - 1) for v, n in zip(voxel, session.shape))])
                if under:
                    session.click(voxel, under, positive=False)


def received_label(data: bytes, image_path: Path, values: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of an uploaded NIfTI label, refused (HTTP 400) unless it is on the image's grid (shape,
    and for a 3D image its affine within 1e-3 mm: a DICOM series', NRRD's or MHA's in NIfTI's RAS) and holds only
    the bundle's label ``values``."""
    with tempfile.TemporaryDirectory() as tmp:
        received = Path(tmp) / "label.nii.gz"
        received.write_bytes(data)
        try:
            label = nib.load(str(received))
            array = np.asarray(label.dataobj)
        except Exception as err:  # nibabel raises many kinds for a file that is not NIfTI
            raise HTTPException(400, f"label: not a NIfTI file ({type(err).__name__})") from None
    header = read_header(image_path)
    grid = tuple(header.shape)
    if len(grid) == 2 and array.ndim == 3 and array.shape[2] == 1:  # a 2D label stored as one NIfTI slice
        array = array[..., 0]
    if array.shape != grid:
        raise HTTPException(400, f"label {array.shape}: not on the image's grid {grid}")
    affine = np.asarray(label.affine)
    image_affine = None
    if has_suffix(image_path, NIFTI_SUFFIXES):
        image_affine = nib.load(str(image_path)).affine
    elif len(grid) == 3 and np.shape(header.affine) == (4, 4):  # a DICOM series, NRRD, MHA: LPS -> NIfTI's RAS
        image_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(header.affine, dtype=np.float64)
    if image_affine is not None:
        if not np.allclose(affine, image_affine, atol=1e-3):
            raise HTTPException(400, "label: its affine is not the image's (another grid or orientation)")
        affine = image_affine
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise HTTPException(400, "label: holds NaN or infinite values; send whole label values"
                                     f" {sorted(values)}")
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise HTTPException(400, f"label: holds values that are not whole numbers (e.g. {float(fractional[0]):g});"
                                     f" send whole label values {sorted(values)}")
    found = {int(v) for v in np.unique(array)}
    if not found <= values:
        raise HTTPException(400, f"label: values {sorted(found)[:10]} are not the bundle's labels {sorted(values)}")
    return array, affine


def _suffix(path: Path) -> str:
    """The image format's suffix of ``path`` (``.nii.gz``; ``""`` for a DICOM series folder): never the rest of a
    file name (``Smith.Jane.nii.gz``'s ``.Jane``)."""
    return "" if path.is_dir() else next((x for x in ALL_SUFFIXES if path.name.lower().endswith(x)), "")


def add_routes(app: FastAPI, server: Any, token: str | None = None) -> None:
    """Add the MONAI Label routes to ``app`` (``server``: :class:`medseg.workflows.serve.Server`; ``token``: the
    server's bearer token, if it has one)."""
    bundle = server.bundle
    guided = bool(bundle.cfg is not None and bundle.cfg.interactive.enabled)
    dimension = int(bundle.cfg.network.spatial_dims) if bundle.cfg is not None else 3
    names = {k: int(v) for v, k in bundle.labels.items()}

    def listed(image: str) -> Path:
        cases = server.listed()
        if image not in cases:
            raise HTTPException(404, f"image {image!r} is not in the datastore")
        return cases[image]

    def saved(image: str) -> bool:
        return (server.output_dir / f"{image}_seg.nii.gz").is_file()

    @app.get("/info/")
    def info() -> dict[str, Any]:
        return info_payload(bundle.name, names, guided, len(server.listed()), dimension)

    @app.get("/datastore/")
    def datastore(output: str = "stats") -> dict[str, Any]:
        cases = server.listed()
        objects = {name: {"image": {"ext": _suffix(path), "info": {}},
                          "labels": {"final": {"ext": ".nii.gz", "info": {}}} if saved(name) else {}}
                   for name, path in cases.items()}
        if output == "all":
            return {"name": "medseg", "description": "--input-dir cases", "objects": objects}
        return {"total": len(objects), "completed": sum(1 for o in objects.values() if o["labels"])}

    @app.put("/datastore/")
    async def upload_image(request: Request, image: str = "") -> dict[str, Any]:
        parts = form_parts(request.headers.get("content-type", ""), await server.read_body(request))
        if "file" not in parts:
            raise HTTPException(400, "file: send the image as the multipart field 'file'")
        filename = Path((parts["file"][0] or "").replace("\\", "/")).name
        suffix = next((s for s in IMAGE_SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None:
            raise HTTPException(400, f"file {filename!r}: send a {', '.join(IMAGE_SUFFIXES)} file")
        name = image if image and image != "None" else filename[: -len(suffix)]  # the client sends None as 'None'
        try:
            check_case_name(name)
        except MedsegError as err:
            raise HTTPException(400, str(err)) from None
        if name in server.listed() and name not in server.uploaded:
            raise HTTPException(409, f"image {name!r} is a case of --input-dir; upload it under another id")
        if name in server.cases:  # open in the page, perhaps with clicks: its session would read another image
            raise HTTPException(409, f"image {name!r} is open in the medseg.serve page; upload it under another id")
        if name in server.pending or name in server.clashes():  # a page upload of it running; two inputs' name
            raise HTTPException(409, f"image {name!r} is being uploaded, or names two --input-dir files; upload it"
                                     " under another id")
        server.pending.add(name)  # until it is checked: a page upload of the same name meanwhile gets a 409
        folder = Path(tempfile.mkdtemp(prefix="datastore_", dir=server.uploads.name))
        path = folder / f"{name}{suffix}"
        path.write_bytes(parts["file"][1])

        def check() -> None:
            check_self_contained(path, filename)  # no header that reads a file of the server's
            with server.lock:  # header reading (SimpleITK for NRRD/MHA) one thread at a time, as every route's
                check_input(bundle, path)  # checked now, not at the first infer

        try:
            await run_in_threadpool(check)
        except MedsegError as err:
            shutil.rmtree(folder, ignore_errors=True)
            # the line names the server's own temporary copy: the client knows the file by its name
            raise HTTPException(400, f"file {filename!r}: {str(err).replace(str(path), filename)}") from None
        finally:
            server.pending.discard(name)
        server.uploaded[name] = path
        return {"image": name}

    @app.get("/auth/")
    def auth() -> dict[str, Any]:
        return {"enabled": bool(token), "client_id": "medseg"}

    @app.post("/auth/token")
    async def auth_token(request: Request) -> dict[str, Any]:
        form = urllib.parse.parse_qs((await server.read_body(request)).decode("utf-8", "replace"))
        password = (form.get("password") or [""])[0]
        if not token or not hmac.compare_digest(password.encode(), token.encode()):
            raise HTTPException(401, "wrong password: give the server's --token as the password")
        return {"access_token": token, "token_type": "Bearer"}

    @app.get("/datastore/image")
    def image(image: str) -> FileResponse:
        path = listed(image)
        if path.is_dir():
            raise HTTPException(400, f"image {image!r} is a DICOM series; open it in the medseg.serve page")
        return FileResponse(path, filename=f"{image}{_suffix(path)}")  # the listed name: the file's may name the patient

    @app.post("/activelearning/{strategy}")
    def next_sample(strategy: str) -> dict[str, Any]:
        for name, path in server.listed().items():
            if not saved(name):  # the listed (safe) name, never the file's own name (it may name the patient)
                return {"id": name, "name": name, "path": f"{name}{_suffix(path)}"}
        return {}

    @app.post("/infer/{model}")
    async def infer(model: str, image: str, request: Request, output: str = "") -> Response:
        started = time.perf_counter()
        if model != MODEL:
            raise HTTPException(404, f"model {model!r}: this server has {MODEL!r}")
        path = listed(image)
        fields = form_fields(request.headers.get("content-type", ""), await server.read_body(request))
        try:
            params = json.loads(fields.get("params") or b"{}")
        except ValueError:
            raise HTTPException(400, "params: not JSON") from None
        if not isinstance(params, dict):
            raise HTTPException(400, f"params: a JSON object (label name -> clicks), not {type(params).__name__}")

        def segment() -> tuple[CaseSession, bytes]:  # in the thread pool: the event loop keeps answering
            with server.lock:
                try:
                    session = server.session(image, path)
                    apply_clicks(session, params, names)
                except MedsegError as err:
                    raise HTTPException(400, str(err)) from None
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / f"{image}_seg.nii.gz"
                    write_label_nifti(session.labels, session.affine, out, source=path)
                    return session, out.read_bytes()

        session, data = await run_in_threadpool(segment)
        result = {"label_names": {k: v for k, v in names.items() if v != 0}, "clicks": len(session.steps),
                  "latencies": {"total": round(time.perf_counter() - started, 3)}}
        filename = f"{image}_seg.nii.gz"
        if output == "json":
            return Response(json.dumps(result), media_type="application/json")
        if output == "image":
            return Response(data, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return multipart({"params": (None, "application/json", json.dumps(result).encode()),
                          "image": (filename, "application/octet-stream", data)})

    @app.put("/datastore/label")
    async def put_label(image: str, request: Request, tag: str = "final") -> dict[str, Any]:
        path = listed(image)
        fields = form_fields(request.headers.get("content-type", ""), await server.read_body(request))
        if "label" not in fields:
            raise HTTPException(400, "label: send the label file as the multipart field 'label'")
        if len(fields["label"]) > server.max_upload:
            raise HTTPException(413, f"label over the limit of {server.max_upload} bytes")

        def store() -> dict[str, Any]:  # in the thread pool, under the lock: header reading and writing as saves do
            with server.lock:
                array, affine = received_label(fields["label"], path, set(names.values()))
                server.output_dir.mkdir(parents=True, exist_ok=True)
                try:
                    check_targets(server.output_dir, image)
                except MedsegError as err:
                    raise HTTPException(400, str(err)) from None
                out = inside(server.output_dir, f"{image}_seg.nii.gz")
                # the task's stored values, as the page's save and medseg.predict write them
                write_label_nifti(stored_values(array.astype(np.uint8), stored_value_map(bundle)), affine, out)
                answer = {"image": image, "label": out.name, "tag": tag}
                # a DICOM case: its SEG is this label, as the page's save writes it
                seg, why = save_dicom_seg(bundle, array.astype(np.uint8), affine, path, server.output_dir, image)
                if seg is not None:
                    answer["dicom_seg"] = seg.name
                elif why is not None:
                    answer["dicom_seg_not_written"] = why
                # the click log beside the mask describes it: an earlier page save's clicks no longer do
                atomic_write_text(inside(server.output_dir, f"{image}_clicks.json"), json.dumps(
                    {"case": image, "bundle": bundle.name, "medseg": __version__, "mode": "label upload",
                     "tag": tag, "events": [], **({"dicom_seg_not_written": why} if why else {})}, indent=2) + "\n")
            return answer

        return await run_in_threadpool(store)
