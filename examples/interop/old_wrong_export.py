import os
import numpy as np, torch, shutil
from pathlib import Path
from safetensors.torch import load_file
import nets
from seenn_deploy.export import foreign
from seenn_deploy.export.adapters.time_loop import StepPlan
from seenn_deploy.export.verify import verify_foreign, cumulative_mean
from seenn_deploy.data import Normalisation, parse_data_spec
from seenn_deploy.runtime.loop import run_timesteps, open_bundle_graphs
from spikingjelly.activation_based import functional
net = nets.jelly(); net.load_state_dict(load_file('jelly.safetensors')); net.eval()
data = parse_data_spec('fashion-mnist:' + os.environ.get('SEENN_DATA', '../shared/data')).load('test').subset(2000)
norm = Normalisation((0.286,), (0.353,))
x = torch.from_numpy((data.x - np.float32(0.286)) / np.float32(0.353))
try:
    foreign.export_model(net, x[:8], Path('refused'), timesteps=4, step_mode='s', normalisation=norm)
except Exception as e: print('forced s:', type(e).__name__, e)
real = foreign.plan_steps
foreign.plan_steps = lambda *a, **k: StepPlan('', multi_step=False)
shutil.rmtree('wrong.seenn', ignore_errors=True)
m = foreign.export_model(net, x[:8], Path('wrong.seenn'), timesteps=4, normalisation=norm)
foreign.plan_steps = real
step, _ = open_bundle_graphs(Path('wrong.seenn'), m)
tr = run_timesteps(m, step, data.x, 4)
for t in range(1, 5):
    net.T = t; functional.reset_net(net)
    with torch.no_grad(): own = torch.cat([net(x[i:i+500]) for i in range(0, 2000, 500)])
    functional.reset_net(net)
    print(f"old wrong export, t={t}: agreement with the model's own {t}-step call {100*(tr.prediction[t-1] == own.argmax(-1).numpy()).mean():.1f}%")
net.T = 4
r = verify_foreign(Path('wrong.seenn'), m, data=data, module=net)
print('verify passed:', r.passed, r.problems, 'data check agreement', [round(a, 3) for a in r.checks[0].agreement], 'loop', r.checks[0].loop_agreement)
