"""kldiv: KL divergence that is correct, explicit and fast.

``kl(p, q)`` is always KL(p || q), the expectation under ``p``; the parametrization is a keyword
at the call site; reductions are explicit. See README.md for a tour.
"""

import sys as _sys

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

# estimators (kldiv.mc, kldiv.samples) and the auditor; kldiv.audit is a callable module:
# kldiv.audit(fn, kind) runs kldiv.audit.audit
# isort: split
from . import audit as audit
from . import mc as mc
from . import penalty as penalty
from . import samples as samples
from . import vae as vae
from .audit import AuditReport as AuditReport
from .samples import from_counts as from_counts
from .samples import from_samples as from_samples

__version__ = "0.1.0"

if "jax" in _sys.modules:  # otherwise each spec class registers itself on first use
    from .dists import register_all_pytrees as _register_all_pytrees

    _register_all_pytrees()
    del _register_all_pytrees

del _closed, _sys
