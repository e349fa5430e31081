from torch import nn
T = 4
class CSNN(nn.Module):
    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
        self.T = T
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8), neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),
            layer.Conv2d(8, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8), neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),
            layer.Flatten(), layer.Linear(8 * 7 * 7, 10, bias=False), neuron.IFNode(surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, "m")
    def forward(self, x):
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.conv_fc(x_seq).mean(0)
def jelly():
    return CSNN()
def snntorch_net():
    import snntorch as snn
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.BatchNorm2d(8), snn.Leaky(beta=0.9, init_hidden=True),
        nn.Flatten(), nn.Linear(8 * 12 * 12, 10), snn.Leaky(beta=0.8, init_hidden=True, output=True))
