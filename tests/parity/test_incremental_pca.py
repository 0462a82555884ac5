"""scikit-learn's ``test_incremental_pca`` run against streamclust (see ``deviations.py``, ``_loader.py``)."""

from ._loader import load_into
from .deviations import MODULES

load_into(globals(), MODULES["test_incremental_pca.py"])
