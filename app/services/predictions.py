"""Rating predictions (seed 003's ``/stream`` and ``/batch``) from the loaded bundle's rating model.

The rating model is a :class:`~app.recommender.models.linear.LinearRatingModel` (the
hand-written :class:`SimpleLinearRegression` over user-by-movie features) trained with the
bundle and loaded with it (``rating_model.pkl``), so a hot reload swaps it together with the
recommendation tables. Many records are predicted in one vectorised call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.api.schemas import FIELD_RULES
from app.errors import InvalidRequest, Unavailable
from app.recommender.models.linear import InvalidRecordError
from app.services.models import ModelHolder

RECORD_FIELDS = frozenset({"age", "gender", "occupation", "movie_id", "user_id"})
# The request schemas' own words (app/api/schemas.py), so a bad field reads the same alone
# (/stream, checked by its schema) and in a batch (checked here); a kept copy had drifted.
RECORD_RULES = {name: FIELD_RULES[name] for name in sorted(RECORD_FIELDS)} | {"record": "must be an object"}


class PredictionService:
    def __init__(self, models: ModelHolder) -> None:
        self.models = models

    def predict(
        self, records: Sequence[Mapping[str, Any]], where: str = "instances"
    ) -> tuple[np.ndarray, str]:
        """Predicted ratings (1..5) for ``records`` and the bundle version that made them.

        ``where`` names the records in error fields (``instances[3].age``); for one record
        (``where="instance"``, /api/predict/stream, whose body is the record) a field is named
        alone (``age``), as the request validation names it.
        """
        bundle = self.models.require()
        model = bundle.rating_model
        if model is None:
            raise Unavailable(f"model {bundle.version} has no rating model; predictions are unavailable")
        single = where == "instance"
        # Checked at C speed over all records at once; the slow path only names the culprit.
        if not all(type(record) is dict for record in records):
            index = next(i for i, record in enumerate(records) if not isinstance(record, dict))
            raise self._invalid(where, index, "record", single)
        keys: set[str] = set().union(*records)
        extra = keys - RECORD_FIELDS
        if extra:
            field = sorted(extra)[0]
            index = next(i for i, record in enumerate(records) if field in record)
            if single:
                raise InvalidRequest(f"unknown field {field}", fields={field: "unknown field"})
            prefix = f"{where}[{index}]"
            raise InvalidRequest(
                f"{prefix}: unknown field {field}", fields={f"{prefix}.{field}": "unknown field"}
            )
        try:
            predicted = model.predict_records(records)  # type: ignore[attr-defined]
        except InvalidRecordError as exc:
            raise self._invalid(where, exc.index, exc.field, single, exc.missing) from exc
        return predicted, bundle.version

    @staticmethod
    def _invalid(where: str, index: int, field: str, single: bool, missing: bool = False) -> InvalidRequest:
        name = field if field in RECORD_RULES else "record"
        rule = RECORD_RULES.get(name, "is invalid")
        if missing:  # worded as the request validation words an absent field
            rule = f"is required and {rule}"
        path = name if single else f"{where}[{index}].{name}"
        return InvalidRequest(f"{path} {rule}", fields={path: rule})
