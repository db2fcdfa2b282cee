"""``python -m napari_medseg.cli`` (also what ``torchrun -m napari_medseg.cli train ...`` runs)."""

import sys

from napari_medseg.cli import main

sys.exit(main())
