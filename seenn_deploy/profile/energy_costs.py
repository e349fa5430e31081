"""The field's energy convention per operation (45 nm CMOS, Horowitz 2014), torch-free for the runtime side.

E = E_MAC_PJ x MACs of analog-input layers (and ANNs such as the SEENN-II policy) + E_SOP_PJ x SOPs of
spike-driven layers.
"""

E_MAC_PJ = 4.6  # pJ per 32-bit multiply-accumulate
E_SOP_PJ = 0.9  # pJ per synaptic operation (an accumulate on a spike)
