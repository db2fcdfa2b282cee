"""What a prediction returns (:class:`Prediction`) and its provenance header (no torch here; the
MONAI-bundle and nnU-Net runners build the same result)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from napari_medseg import __version__
from napari_medseg.volume import Volume

__all__ = ["Prediction", "provenance_metadata"]


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` returns, everything on the input's grid.

    Attributes
    ----------
    labels : Volume
        ``(z, y, x)`` label values of the card (smallest unsigned dtype), argmax of the
        probabilities.
    probabilities : Volume
        ``(z, y, x, C)`` float32 mean probabilities, channel ``i`` for the ``i``-th label value
        in ascending order.
    uncertainty : dict of str to Volume
        ``"entropy"`` (``(z, y, x)``, nats) always; ``"mutual_information"`` (``(z, y, x)``) and
        ``"variance"`` (``(z, y, x, C)``, per label) when more than one sample was drawn
        (``mc_samples > 0``, ``tta_flips`` or an ensemble).
    provenance : dict
        Models (name, version, sha256, source), parameters, package version, device, warnings.
    """

    labels: Volume
    probabilities: Volume
    uncertainty: dict[str, Volume]
    provenance: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """What was doubtful about the input (card mismatches), as messages: returned as data, so a
        caller in a worker thread never has to catch ``warnings`` (which is process-global)."""
        return [str(m) for m in self.provenance.get("warnings", [])]


def provenance_metadata(provenance: dict) -> dict[str, str]:
    """Header key-value pairs (NRRD/MHA metadata) that record a prediction's provenance.

    Keys: ``medseg_model`` (comma-separated names), ``medseg_model_sha256`` (comma-separated),
    ``medseg_version`` and ``medseg_provenance`` (the whole record as JSON).
    """
    models = provenance.get("models", [])
    return {
        "medseg_model": ",".join(m["name"] for m in models),
        "medseg_model_sha256": ",".join(m["sha256"] for m in models),
        "medseg_version": str(provenance.get("version", __version__)),
        "medseg_provenance": json.dumps(provenance, sort_keys=True),
    }
