"""The two ways a dcfm-bag-eval run fails, each with its exit status."""

from __future__ import annotations


class BagEvalError(Exception):
    """The evaluation cannot run as asked (bad bag, topic, parameter, model); exit status 2."""


class NodeFailedError(BagEvalError):
    """dcfm_node exited or did not come up; the message carries its log tail. Exit status 3."""
