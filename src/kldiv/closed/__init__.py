"""Closed-form KL divergences, one module per family; importing this registers them all."""

from . import bernoulli as bernoulli
from . import categorical as categorical
from . import mvn as mvn
from . import normal as normal
