"""The napari face of napari-medseg: reader, writer, sample data and dock widgets (``napari.yaml``).

Everything here is a thin translation between napari layers and the core: widgets call core
functions in napari workers (``_worker.TaskRunner``) and never hold an algorithm.
"""
