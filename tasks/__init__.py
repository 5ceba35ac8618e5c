"""Built-in tasks, one file per data set; importing this package registers them all."""

from highmmt._autoimport import import_submodules

import_submodules(__name__, __path__, skip=("caches", "check"))  # command-line modules: run with python -m
