"""kldiv: KL divergence that is correct, explicit and fast.

``kl(p, q)`` is always KL(p || q), the expectation under ``p``; the parametrization is a keyword
at the call site; reductions are explicit. See README.md for a tour.
"""

from . import closed as _closed  # registers the closed forms
from ._kl import kl as kl
from ._reduce import REDUCTIONS as REDUCTIONS
from ._registry import register_kl as register_kl
from ._registry import registered_pairs as registered_pairs
from .dists import Bernoulli as Bernoulli
from .dists import Categorical as Categorical
from .dists import Distribution as Distribution
from .dists import MultivariateNormal as MultivariateNormal
from .dists import Normal as Normal
from .errors import KLDivError as KLDivError

__version__ = "0.1.0"

del _closed
