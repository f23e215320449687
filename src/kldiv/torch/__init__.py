"""kldiv's PyTorch layer: loss modules, the torch.distributions bridge, distributed reductions
and large-vocabulary kernels. Importing it imports torch; ``import kldiv`` does not.
"""

# --- loss modules, bridge, distributed reductions (issue 5) ---
from .bridge import kl_divergence as kl_divergence
from .distributed import global_count as global_count
from .distributed import global_normalizer as global_normalizer
from .distributed import sequence_weights as sequence_weights
from .distributed import trainer_normalizer as trainer_normalizer
from .losses import BernoulliKLLoss as BernoulliKLLoss
from .losses import CategoricalKLLoss as CategoricalKLLoss
from .losses import NormalKLLoss as NormalKLLoss

# --- large-vocabulary KL (issue 6) ---
from .topk import topk_kl as topk_kl
from .vocab import fused_linear_vocab_kl as fused_linear_vocab_kl
from .vocab import vocab_kl as vocab_kl
