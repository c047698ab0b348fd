"""The quax rule for `jax.checkpoint` (remat): typed weights pass through remat'd blocks unmaterialised.

quax 0.4.6 registers no rule for `remat_p`, so its fallback would materialise every typed weight a
checkpointed function closes over or takes as an argument (a QLoRA block under
`TransformerConfig(remat='nothing')` would hold its dequantized f32 kernels). This rule re-enters
`jax.checkpoint` on the quaxified body, so the checkpoint boundary, its policy and `prevent_cse` are kept
while the body's `dot_general`/`gather` still dispatch to the typed weights' rules. Importing
`leanjax.transforms` registers it.
"""

from __future__ import annotations

import jax
import quax
from jax._src.ad_checkpoint import remat_p
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun


@quax.register(remat_p)
def _remat(*args, jaxpr, prevent_cse, differentiated, policy):
    # `args` mix plain arrays and typed weights (quax values). `jax.checkpoint` sees only their array
    # leaves; the body rebuilds the typed weights from them and runs the original jaxpr under quax.
    # `differentiated` is set by JAX itself when it transposes the remat; re-entering `jax.checkpoint`
    # recomputes it, so it is not forwarded.
    del differentiated
    leaves, treedef = jax.tree.flatten(args)
    body = quax.quaxify(jaxpr_as_fun(ClosedJaxpr(jaxpr, ())))

    def on_leaves(*leaves):
        return body(*jax.tree.unflatten(treedef, leaves))

    return jax.checkpoint(on_leaves, prevent_cse=prevent_cse, policy=policy)(*leaves)
