"""ANN-to-SNN conversion: QCFS (or ReLU with percentile thresholds) ANNs of the zoo become IF-neuron SNN checkpoints."""
