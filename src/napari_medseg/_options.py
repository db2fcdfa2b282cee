"""Old import path of :mod:`napari_medseg.choices` (``look_up_option``, ``close_matches_message``)."""

from napari_medseg.choices import close_matches_message, look_up_option

__all__ = ["look_up_option", "close_matches_message"]
