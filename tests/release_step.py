"""The pipeline flow's release-step methods, for tests that run them on a state of their own."""

from __future__ import annotations

from app.pipeline.flow import MovieRecTrainingFlow


class ReleaseStep:
    """The flow's register, gate, export and hand-over methods, unbound from Metaflow: a subclass
    sets the attributes the flow's earlier steps set (``registered``, ``data``, ``seed_list``, ...)."""

    _register = MovieRecTrainingFlow._register
    _gate = MovieRecTrainingFlow._gate
    _export = MovieRecTrainingFlow._export
    _record_promoted = MovieRecTrainingFlow._record_promoted
    _not_promoted = MovieRecTrainingFlow._not_promoted
    _summary = MovieRecTrainingFlow._summary
    _hand_over = MovieRecTrainingFlow._hand_over
