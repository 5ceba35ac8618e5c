"""Modality embedders, one file per kind; importing this package registers them all."""

from highmmt._autoimport import import_submodules

import_submodules(__name__, __path__)
