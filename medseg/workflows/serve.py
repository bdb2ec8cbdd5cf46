"""The click-and-correct server (``python -m medseg.serve``): a FastAPI app over :mod:`medseg.workflows.interact`.

Routes (JSON unless said; with a token, every route but the page and MONAI Label's ``/auth/`` needs
``Authorization: Bearer <token>``):

- ``GET /``: the page (:mod:`medseg.workflows.serve_page`; plain canvas, no script libraries, works offline)
- ``GET /api/info``: bundle name, labels, whether clicks rerun the network (click-guided bundle)
- ``GET /api/cases``: the cases under ``--input-dir`` and the open ones
- ``POST /api/open`` ``{"name": case}``: open a case of ``--input-dir`` (by its listed name only)
- ``POST /api/upload?name=file.nii.gz``: open an uploaded NIfTI/NRRD/MHA file, or a DICOM series as one
  ``name.zip`` of its files (body: the file; size-limited, a zip also on its unpacked size)
- ``GET /api/cases/{case}``: shape, spacing, clicks; ``.../image`` float32 and ``.../mask`` uint8 raw voxels
  (C order, shape in ``X-Shape``)
- ``POST /api/cases/{case}/click`` ``{"voxel": [i, j, k], "label": c, "positive": true}``; ``.../undo``;
  ``.../save`` (files written into ``--output-dir``)
- MONAI Label's routes for 3D Slicer (:mod:`medseg.workflows.monailabel`)
"""

from __future__ import annotations

import errno
import hmac
import io
import logging
import ipaddress
import lzma
import math
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from nibabel.orientations import io_orientation
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware

from medseg.bundle.load import LoadedBundle, load_bundle
from medseg.data.formats import VOLUME_SUFFIXES
from medseg.data.dicom import SKIP_NAMES
from medseg.data.uploads import check_self_contained
from medseg.errors import MedsegError, check_folder_option, failure_line, no_folder, user_error
from medseg.workflows import monailabel
from medseg.workflows.interact import (SAVED, CaseSession, check_case_name, is_number, session_forward,
                                      without_path)
from medseg.workflows.predict import check_input, find_inputs, without_masks
from medseg.workflows.serve_page import PAGE

logger = logging.getLogger(__name__)

#: uploads larger than this are refused (413)
DEFAULT_MAX_UPLOAD_MB = 1024
UPLOAD_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if s != ".dcm")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """A non-loopback ``host`` needs a token (one-line error otherwise)."""
    if not is_loopback(host) and not token:
        raise MedsegError(f"--host {host}: not a loopback address; give --token T as well (every request then needs"
                          " 'Authorization: Bearer T')")


#: what a token server answers without the token: the page (it holds no data and sends the token, from #token=,
#: with every call) and MONAI Label's auth routes (whether a token is needed; the token for the right password)
OPEN_PATHS = ("/", "/auth/", "/auth/token")


class _Token(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.expected = token.encode()

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        if request.url.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.expected):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)


class Server:
    """The open cases of one bundle.

    One lock (``lock``, re-entrant) around everything that reads or writes an image or a mask: requests on CPU are
    served one at a time, a mask is never sent half-updated by a click, and ITK (SimpleITK, MONAI's ITK reader) is
    never used from two threads at once (its globals are not thread-safe: a full test run once hung in
    SimpleITK's exit handler after ITK had been used from several of the server's threads). Async routes run
    their locked part in the thread pool, so the event loop keeps answering while a case is segmented."""

    def __init__(self, bundle: LoadedBundle, output_dir: Path, input_dir: Path | None = None,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, device: str = "cpu",
                 order: list[str] | None = None, engine: str = "torch") -> None:
        self.bundle, self.output_dir, self.input_dir = bundle, Path(output_dir), input_dir
        self.forward = session_forward(bundle, engine, device)  # built once (an ONNX engine compiles the model)
        self.order = {name: i for i, name in enumerate(order or [])}  # medseg.rank's order; the rest by name
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.device = torch.device(device)
        self.cases: dict[str, CaseSession] = {}
        self.lock = threading.RLock()
        self.uploads = tempfile.TemporaryDirectory(prefix="medseg-serve-")
        self.uploaded: dict[str, Path] = {}  # images put into the datastore over MONAI Label's PUT /datastore/
        self.pending: set[str] = set()  # upload names being received: a second upload of one name is refused
        self.warned: set[str] = set()  # clashing case names already logged

    def listed(self) -> dict[str, Path]:
        """The datastore: the cases under ``--input-dir`` (``medseg.rank``'s order, then by name), then the
        uploaded images. Left out: the masks medseg wrote beside their cases (``<case>_seg``: an ``--output-dir``
        that is the input folder), and inputs whose case names clash (``a.mha`` and ``a.nrrd``, ``Patient 1`` and
        ``Patient_1``: which file a saved mask belongs to would be a guess; :meth:`clashes` names them)."""
        listed, clashing = self._scan()
        return {**listed, **{k: v for k, v in self.uploaded.items() if k not in listed and k not in clashing}}

    def _scan(self) -> tuple[dict[str, Path], dict[str, list[Path]]]:
        found = without_masks(find_inputs(self.input_dir)) if self.input_dir else []
        by_name: dict[str, list[Path]] = {}
        for name, path in sorted(found, key=lambda c: (self.order.get(c[0], len(self.order)), c[0])):
            by_name.setdefault(safe_case_name(name), []).append(path)  # "Patient 1 (CT)" is listed as Patient_1_CT
        clashing = {name: paths for name, paths in by_name.items() if len(paths) > 1}
        for name, paths in clashing.items():
            if name not in self.warned:
                self.warned.add(name)
                logger.warning("--input-dir: %s are all case '%s'; left out of the list: rename all but one",
                               ", ".join(p.name for p in paths), name)
        return {name: paths[0] for name, paths in by_name.items() if len(paths) == 1}, clashing

    def clashes(self) -> dict[str, list[Path]]:
        """Case names that two or more inputs under ``--input-dir`` share (left out of :meth:`listed`)."""
        return self._scan()[1]

    async def read_body(self, request: Request) -> bytes:
        """The request's body, refused (HTTP 413) once it is over the upload limit (the declared length first)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_upload:
            raise HTTPException(413, f"upload of {int(declared)} bytes: over the limit of {self.max_upload}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_upload:
                raise HTTPException(413, f"upload over the limit of {self.max_upload} bytes")
        return bytes(data)

    def session(self, name: str, path: Path, shown: str | None = None) -> CaseSession:
        """A new session of the case at ``path``; whatever stops it is one :class:`MedsegError` line (the input
        checks of ``medseg.predict`` first: damaged, 4D, colour, 2D for a 3D network), naming the case ``shown``
        (default: ``name``) where it would name ``path``."""
        shown = shown or name
        try:
            check_input(self.bundle, path, pages=False)  # a multi-page TIFF on a 2D network: one line, not the chain's
            return CaseSession(self.bundle, name, path, self.device, forward=self.forward)
        except MedsegError as err:  # named by the case: the server's path may name the patient (a folder, a file)
            raise MedsegError(self.scrub(str(err), path, shown)) from None
        except Exception as err:  # MONAI wraps a reader's or a transform's error in RuntimeError
            found = user_error(err) or MedsegError(f"case {name}: cannot be read or segmented ({failure_line(err)})")
            raise MedsegError(self.scrub(str(found), path, shown)) from None

    def scrub(self, text: str, path: Path, shown: str) -> str:
        """``text`` with the case's path named ``shown``, and any other path under ``--input-dir`` by its place
        there only (``<input>/...``)."""
        text = without_path(text, path, shown)
        return without_path(text, self.input_dir, "<input>") if self.input_dir is not None else text

    def open(self, name: str, path: Path, shown: str | None = None) -> CaseSession:
        """The open case ``name`` (with its clicks, when that case is already open from ``path``), else a new
        session of it."""
        with self.lock:
            session = self.cases.get(name)
            if session is not None and session.path == path:  # opened again (another tab, a reload): keep its clicks
                return session
            session = self.session(name, path, shown)
            self.cases[name] = session
            return session

    def case(self, name: str) -> CaseSession:
        if name not in self.cases:
            raise HTTPException(404, f"case {name!r} is not open")
        return self.cases[name]


def safe_case_name(name: str) -> str:
    """``name`` with every character a case name may not hold replaced by ``_`` (no leading ``.``/``_``/``-``)."""
    safe = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", name)).strip("._-").replace("..", "_")
    return safe[:120] or "case"


def _summary(session: CaseSession, output_dir: Path | None = None) -> dict[str, Any]:
    """What the page shows of an open case; ``saved``: this case's files already in ``output_dir`` (an earlier
    session's correction, which Save replaces)."""
    saved = sorted(p.name for p in output_dir.glob(f"{session.name}_*") if p.is_file() and
                   p.name in saved_names(session.name)) if output_dir is not None and output_dir.is_dir() else []
    return {"case": session.name, "shape": list(session.shape), "spacing": session.spacing,
            "clicks": len(session.steps), "automatic_seconds": round(session.auto_seconds, 3),
            "axes": voxel_axes(session.affine, len(session.shape)), "saved": saved}


def saved_names(case: str) -> set[str]:
    """The names a save of ``case`` writes (:meth:`CaseSession.save`)."""
    return {pattern.format(case=case) for pattern in SAVED}


def voxel_axes(affine: Any, ndim: int) -> list[list[int]] | None:
    """Per voxel axis of a 3D case, ``[world axis, sign]``: the RAS axis (0 x, 1 y, 2 z) it runs closest to and
    +1 where its index grows towards right/anterior/superior, -1 the other way (nibabel's ``io_orientation`` of
    the mask's RAS affine). The page lays its planes out by them in the radiological convention. None for 2D."""
    if ndim != 3 or np.shape(affine) != (4, 4):
        return None
    return [[int(axis), int(sign)] for axis, sign in io_orientation(np.asarray(affine, dtype=np.float64))]


def _fail(err: MedsegError) -> HTTPException:
    return HTTPException(413 if isinstance(err, TooLarge) else 400, str(err))


def create_app(server: Server, token: str | None = None) -> FastAPI:
    app = FastAPI(title="medseg.serve", docs_url=None, redoc_url=None, openapi_url=None)
    if token:
        app.add_middleware(_Token, token=token)
    _add_page_routes(app, server)
    _add_open_routes(app, server)
    _add_upload_route(app, server)
    _add_volume_routes(app, server)
    _add_click_routes(app, server)
    _add_save_route(app, server)
    monailabel.add_routes(app, server, token)  # 3D Slicer's MONAI Label module: /info/, /infer/{model}, /datastore/...
    return app


def _add_page_routes(app: FastAPI, server: Server) -> None:
    """``GET /`` (the page) and ``GET /api/info``."""
    bundle = server.bundle

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"bundle": bundle.name, "labels": {str(v): k for v, k in sorted(bundle.labels.items())},
                "guided": bool(bundle.cfg is not None and bundle.cfg.interactive.enabled)}


def _add_open_routes(app: FastAPI, server: Server) -> None:
    """``GET /api/cases`` and ``POST /api/open`` (a case of ``--input-dir``)."""

    @app.get("/api/cases")
    def cases() -> dict[str, Any]:
        try:
            listed = list(server.listed())
        except MedsegError:
            listed = []
        return {"input": listed, "open": sorted(server.cases)}

    @app.post("/api/open")
    def open_case(body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("name", ""))
        listed = server.listed()
        if name not in listed:  # only names the server listed itself: no path from the request is joined
            raise HTTPException(404, f"case {name!r} is not in the input folder")
        try:
            return _summary(server.open(check_case_name(name), listed[name]), server.output_dir)
        except MedsegError as err:
            raise _fail(err) from None


def _add_upload_route(app: FastAPI, server: Server) -> None:
    """``POST /api/upload?name=file.nii.gz`` (size-limited)."""

    @app.post("/api/upload")
    async def upload(request: Request, name: str) -> dict[str, Any]:
        try:
            check_case_name(name)
        except MedsegError as err:
            raise _fail(err) from None
        suffix = next((s for s in (*UPLOAD_SUFFIXES, ".zip") if name.lower().endswith(s)), None)
        if suffix is None:
            raise HTTPException(400, f"upload {name!r}: send a {', '.join(UPLOAD_SUFFIXES)} file, or a DICOM series"
                                     " as one .zip of its files")
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise HTTPException(400, f"upload {name!r}: send the file itself as the body (curl --data-binary @FILE),"
                                     " not a form")
        case = name[: -len(suffix)]
        listed, clashing = server._scan()  # one listing of the input folder
        if case in server.cases or case in server.pending or case in listed or case in clashing \
                or case in server.uploaded:
            raise HTTPException(409, f"upload {name!r}: a case named {case!r} is already open, being uploaded or in the"
                                     " input folder; upload it under another name")
        server.pending.add(case)  # until this upload is open or refused: two at once never both open one name
        folder = None
        try:
            data = await server.read_body(request)
            if suffix == ".zip":
                folder = unzip_series(bytes(data), Path(server.uploads.name), server.max_upload)
                path = folder
            else:  # a folder of its own: a case of that name already open keeps reading its own file
                folder = Path(tempfile.mkdtemp(prefix="upload_", dir=server.uploads.name))
                path = folder / name
                path.write_bytes(bytes(data))
                check_self_contained(path, name)  # no header that reads a file of the server's
            summary = _summary(await run_in_threadpool(server.open, check_case_name(case), path, name), server.output_dir)
            server.uploaded[case] = path  # in MONAI Label's datastore too, as a PUT /datastore/ upload is
            return summary
        except MedsegError as err:  # named as the client sent it, not by the server's temporary copy
            line = str(err) if folder is None else str(err).replace(str(path), name).replace(str(folder), name)
            raise HTTPException(_fail(err).status_code, line) from None
        finally:
            server.pending.discard(case)
            if folder is not None and case not in server.cases:  # nothing of a refused upload stays on disk
                shutil.rmtree(folder, ignore_errors=True)


class TooLarge(MedsegError):
    """An upload over the size limit (HTTP 413)."""


#: files a zipped DICOM series may hold (a series of 20 000 slices is far beyond any scanner's)
MAX_ZIP_FILES = 20_000
#: what a damaged, truncated or encrypted zip raises while it is opened or read
_ZIP_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, lzma.LZMAError, zlib.error, NotImplementedError,
               RuntimeError)


def unzip_series(data: bytes, parent: Path, limit: int) -> Path:
    """A DICOM series sent as one zip, unpacked flat into a new folder under ``parent`` (returned): no member's
    folders are used, so nothing can land outside it (a member named with ``..`` or an absolute path is refused
    outright; symbolic links arrive as plain files); hidden files, macOS resource forks and the files DICOM
    exports carry beside a series (DICOMDIR, ...) are left out. Refused with :class:`TooLarge` over
    :data:`MAX_ZIP_FILES` files or once the unpacked bytes pass ``limit`` (counted while writing, not from the
    zip's own sizes, which a zip bomb can fake). The folder is removed again on any failure."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except _ZIP_ERRORS:
        raise MedsegError("upload: not a readable zip file; send the DICOM series' files as one .zip") from None
    members = []
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise MedsegError(f"upload: the zip member {info.filename!r} points outside the archive; zip the"
                              " series' files themselves")
        if not info.is_dir() and path.name not in SKIP_NAMES and not any(
                part.startswith(".") or part == "__MACOSX" for part in path.parts):
            members.append((info, path.name))
    if not members:
        raise MedsegError("upload: the zip holds no files; zip the DICOM series' files")
    if len(members) > MAX_ZIP_FILES:
        raise TooLarge(f"upload: the zip holds {len(members)} files, more than {MAX_ZIP_FILES}")
    folder = Path(tempfile.mkdtemp(prefix="series_", dir=parent))
    written = 0
    try:
        for i, (info, name) in enumerate(members):
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-64:]
            try:
                with archive.open(info) as src, open(folder / f"{i:06d}_{safe}", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limit:
                            raise TooLarge(f"upload: the zip unpacks to over the limit of {limit} bytes"
                                           " (raise --max-upload-mb for a larger series)")
                        dst.write(chunk)
            except _ZIP_ERRORS as err:
                raise MedsegError(f"upload: cannot unpack {name!r} from the zip ({type(err).__name__}: {err}); zip"
                                  " the series again, without encryption") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _raw(array: Any) -> Response:
    return Response(array.tobytes(), media_type="application/octet-stream",
                    headers={"X-Shape": ",".join(map(str, array.shape)), "X-Dtype": str(array.dtype)})


def _add_volume_routes(app: FastAPI, server: Server) -> None:
    """``GET /api/cases/{case}`` and its ``/image`` and ``/mask`` raw voxels."""

    @app.get("/api/cases/{case}")
    def case_info(case: str) -> dict[str, Any]:
        return _summary(server.case(case), server.output_dir)

    @app.get("/api/cases/{case}/image")
    def image(case: str) -> Response:
        session = server.case(case)
        with server.lock:  # the chain's reader (ITK for NRRD/MHA) one thread at a time
            return _raw(session.image_array())

    @app.get("/api/cases/{case}/mask")
    def mask(case: str) -> Response:
        session = server.case(case)
        with server.lock:  # never a mask half-way through a click's update
            return _raw(session.labels)


def _add_click_routes(app: FastAPI, server: Server) -> None:
    """``POST /api/cases/{case}/click`` and ``.../undo``."""

    @app.post("/api/cases/{case}/click")
    def click(case: str, body: dict[str, Any]) -> dict[str, Any]:
        session = server.case(case)
        voxel, label, positive = body.get("voxel"), body.get("label"), body.get("positive", True)
        if not (isinstance(voxel, list) and all(is_number(v) for v in voxel) and isinstance(label, int)
                and not isinstance(label, bool) and isinstance(positive, bool)):
            raise HTTPException(400, 'click: send {"voxel": [i, j, k], "label": class, "positive": true|false}'
                                     " (numbers, a whole class number, a JSON true or false)")
        voxel = [float(v) for v in voxel]
        with server.lock:
            try:
                return {**session.click(voxel, label, positive), "clicks": len(session.steps)}
            except MedsegError as err:
                raise _fail(err) from None

    @app.post("/api/cases/{case}/undo")
    def undo(case: str) -> dict[str, Any]:
        session = server.case(case)
        with server.lock:
            return {"undone": session.undo(), "clicks": len(session.steps)}


def _add_save_route(app: FastAPI, server: Server) -> None:
    """``POST /api/cases/{case}/save`` (files written into ``--output-dir``)."""

    @app.post("/api/cases/{case}/save")
    def save(case: str) -> dict[str, Any]:
        session = server.case(case)
        with server.lock:
            try:
                files = session.save(server.output_dir)
            except MedsegError as err:
                raise _fail(err) from None
            except OSError as err:  # the output folder itself (full disk, permissions): one line, not a 500 page
                raise HTTPException(507 if err.errno == errno.ENOSPC else 500, f"save of {case!r}: cannot write in"
                                    f" --output-dir ({err.strerror or type(err).__name__})") from None
        return {"files": [p.name for p in files], "output_dir": server.output_dir.name,
                **({"warning": session.save_warning} if session.save_warning else {})}


def check_options(port: int, max_upload_mb: float) -> None:
    """One line for a port outside 0..65535 or an upload limit that is not a positive number of MB."""
    if not 0 <= port <= 65535:
        raise MedsegError(f"--port {port}: give a port number from 1 to 65535 (0: any free port)")
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise MedsegError(f"--max-upload-mb {max_upload_mb}: give a positive number of megabytes")


def check_port(host: str, port: int) -> None:
    """One line now, not uvicorn's error after the bundle loaded: a host that does not resolve, a port in use."""
    try:  # the address family of the host (::1 is IPv6), as uvicorn resolves it
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise MedsegError(f"--host {host}: not an address of this machine ({getattr(err, 'strerror', None) or err});"
                          " give an IP address or a name that resolves here") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise MedsegError(f"--host {host}: not an address of this machine ({err.strerror}); give one of its"
                                  " addresses, or 0.0.0.0 for all") from None
            raise MedsegError(f"--port {port}: cannot listen on {host} ({err.strerror}); choose another port") from None


def run(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
        input_dir: str | Path | None = None, output_dir: str | Path = "corrected", device: str = "cpu",
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, trust: bool = False, order: list[str] | None = None,
        engine: str = "torch") -> None:
    """Serve ``bundle`` until interrupted (see the module docstring)."""
    import uvicorn  # deferred: only the server itself needs it

    check_host(host, token)
    check_options(port, max_upload_mb)
    if input_dir is not None and not Path(input_dir).is_dir():
        raise no_folder(input_dir, f"--input-dir {input_dir}", "the folder of images and DICOM series to open")
    check_folder_option(output_dir, "--output-dir", "corrected masks go to")
    check_port(host, port)
    loaded = load_bundle(Path(bundle), torch.device(device), trust=trust)
    server = Server(loaded, Path(output_dir), Path(input_dir) if input_dir else None, max_upload_mb, device, order,
                    engine)
    for name, paths in server.clashes().items():  # at start: one line, before anything is served
        raise MedsegError(f"--input-dir {input_dir}: {', '.join(p.name for p in paths)} are all case '{name}' (a"
                          " saved mask could not tell which it belongs to); rename all but one")
    print(f"serving {bundle} on http://{host}:{port}/" + ("#token=..." if token else ""), flush=True)
    # uvicorn re-raises SIGTERM after its shutdown, with the handler it found: this one exits through Python, so
    # the uploads folder (patient data) is removed as on Ctrl-C
    main = threading.current_thread() is threading.main_thread()  # signal handlers: the main thread only
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)) if main else None
    try:
        uvicorn.run(create_app(server, token), host=host, port=port, log_level="warning")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.uploads.cleanup()
