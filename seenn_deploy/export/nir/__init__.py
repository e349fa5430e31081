"""NIR (the Neuromorphic Intermediate Representation) graphs to bundles.

    export_nir(Path("net.nir"), Path("net.seenn"), input_shape=(1, 28, 28), timesteps=4)

Files from snnTorch, Sinabs, Norse, spyx or Lava-dl are read with `nir` (extra `nir`), their
nodes mapped to state-explicit modules (nodes.py, neurons.py: forward Euler with a stated dt),
and the graph run one timestep per step call (model.py). The dt and what was repaired on the
way are recorded in the manifest's provenance["nir"].
"""

from seenn_deploy.export.nir.export import export_nir, export_nir_graph, repaired_graph
from seenn_deploy.export.nir.model import NIRImport, NIRModel, nir_model
from seenn_deploy.export.nir.reading import read_graph

__all__ = ["NIRImport", "NIRModel", "export_nir", "export_nir_graph", "nir_model", "read_graph", "repaired_graph"]
