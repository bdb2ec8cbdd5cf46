"""The checks of a task config that need more than the schema: what the network itself accepts.

:func:`medseg.config.load_config` validates every key (types, ranges, names, dimensions); the checks that
must build the network on the meta device live in the networks layer, and the commands run them through
:func:`check_task` before training or predicting (the engine is the lowest layer that sees both the config
and the networks).
"""

from __future__ import annotations

from medseg.config import TaskConfig
from medseg.networks import check_network


def check_task(cfg: TaskConfig, source: str | None = None) -> TaskConfig:
    """Refuse, in one line naming the key, a config the network cannot be built or trained with: arguments it
    does not take, patch sizes that are not multiples of what it needs, deep supervision weights of the wrong
    length; the message starts with ``source`` (default: the file the config came from). Returns ``cfg`` unchanged (for chaining: ``cfg = check_task(load_config(task))``).
    """
    check_network(cfg, cfg.source if source is None else source)
    return cfg
