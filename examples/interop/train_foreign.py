import os
import sys, time, numpy as np, torch, torch.nn.functional as F
from safetensors.torch import save_file
import nets
torch.manual_seed(0); torch.set_num_threads(1)
d = np.load(os.path.join(os.environ.get('SEENN_DATA', '../shared/data'), 'fashion_mnist_train.npz'))
x = torch.from_numpy(((d['x'].astype(np.float32) / 255) - 0.286) / 0.353).unsqueeze(1); y = torch.from_numpy(d['y'].astype(np.int64))
which, steps = sys.argv[1], int(sys.argv[2])
net = getattr(nets, which)(); net.train()
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
t0 = time.time()
for i in range(steps):
    idx = torch.randint(0, len(x), (64,))
    xb, yb = x[idx], y[idx]
    if which == 'jelly':
        from spikingjelly.activation_based import functional
        out = net(xb); loss = F.mse_loss(out, F.one_hot(yb, 10).float()); 
    else:
        import snntorch.utils as su
        from snntorch import Leaky
        for m in net.modules():
            if isinstance(m, Leaky): m.reset_mem()
        mems = []
        for _ in range(4):
            spk, mem = net(xb); mems.append(mem)
        loss = F.cross_entropy(torch.stack(mems).mean(0), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    if which == 'jelly':
        functional.reset_net(net)
    if i % 100 == 0: print(i, float(loss), time.time() - t0, flush=True)
net.eval()
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f'{which}.safetensors')
print('done', time.time() - t0)
