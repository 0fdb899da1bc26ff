# Prototype behind docs/benchmark.md "A mask-and-pattern (patch) family" (stop 19); not part of ci-gate.
# usage: python docs/experiments/patch_family_proto.py ZOO_MODEL.safetensors patch 0.01,0.02,0.04 STEPS_PER_RUNG LR  (GRID=8 for the coarse mask)
# expects the bench cache at /work/bench-cache (published backbone) and ../shared/data/ood/imagenet-1k
"""Prototype: mask-and-pattern (patch/blend) inversion families vs the published reference."""
import sys, time, torch, statistics
from pathlib import Path
from ci_gate.model import load_classifier
from ci_gate.pool import load_pool
from ci_gate.reference import reference_backbone, reference_classifier
from ci_gate.inversion.losses import margin
torch.set_num_threads(1)
ckpt = Path(sys.argv[1]); fam = sys.argv[2]; budgets = [float(b) for b in sys.argv[3].split(",")]
steps_per = int(sys.argv[4]) if len(sys.argv) > 4 else 6
lr = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
pub = Path("/work/bench-cache/backbone-690cf2b601d0/backbone.safetensors")
loaded = load_classifier(ckpt)
clf = loaded.classifier; clf.freeze()
pool = load_pool(str(Path(__file__).resolve().parents[3] / "shared/data/ood/imagenet-1k"), loaded.preprocessing.image_size, 100, 1000, loaded.preprocessing.interpolation, seed=0)
imgs = pool.images
ref = reference_classifier(loaded, clf.class_names, reference_backbone(loaded, pub)); ref.freeze()
S = imgs.shape[-1]; C = clf.n_classes

def project_area(m, B):
    # capped simplex: 0<=m<=1, sum m <= B (per class), by bisection on a shift tau
    m = m.clamp(0, 1)
    over = m.flatten(1).sum(1) > B
    if not over.any(): return m
    lo = torch.zeros(m.shape[0]); hi = torch.ones(m.shape[0])
    for _ in range(30):
        tau = (lo + hi) / 2
        s = (m - tau.view(-1,1,1,1)).clamp(0,1).flatten(1).sum(1)
        lo = torch.where(s > B, tau, lo); hi = torch.where(s > B, hi, tau)
    out = (m - hi.view(-1,1,1,1)).clamp(0,1)
    return torch.where(over.view(-1,1,1,1), out, m)

def run(model):
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(imgs.shape[0], generator=g).split(32)
    tg = torch.arange(C)
    if fam == "patch":
        G = int(__import__("os").environ.get("GRID", "8"))
        mask = torch.full((C,1,G,G), budgets[0]*0.5, requires_grad=True)
    else:
        mask = None
    pat = torch.full((C,3,S,S), 0.5, requires_grad=True)
    params = [pat] + ([mask] if mask is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    out = []
    it = iter(order * 10)
    for B in budgets:
        for _ in range(steps_per):
            idx = next(it); x = imgs[idx]
            if fam == "patch":
                m = torch.nn.functional.interpolate(mask, size=(S,S), mode="nearest")
            else:
                m = torch.full((C,1,1,1), B)
            xs = ((1 - m.unsqueeze(1)) * x.unsqueeze(0) + (m * pat).unsqueeze(1)).clamp(0,1).flatten(0,1)
            lg = model(xs).view(C, x.shape[0], -1)
            loss = margin(lg.reshape(-1, C), tg.repeat_interleave(x.shape[0])).view(C,-1).mean(1).sum()
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad():
                pat.clamp_(0,1)
                if mask is not None: mask.copy_(project_area(mask, B*mask.shape[-1]**2))
        with torch.no_grad():
            ev = imgs[:256]
            m = torch.nn.functional.interpolate(mask, size=(S,S), mode="nearest") if fam == "patch" else torch.full((C,1,1,1), B)
            hits = torch.zeros(C); ls = torch.zeros(C)
            for ch in ev.split(64):
                xs = ((1 - m.unsqueeze(1)) * ch.unsqueeze(0) + (m * pat).unsqueeze(1)).clamp(0,1).flatten(0,1)
                lg = model(xs).view(C, ch.shape[0], -1)
                t = tg.repeat_interleave(ch.shape[0])
                hits += (lg.reshape(-1,C).argmax(1) == t).view(C,-1).sum(1)
                ls += (margin(lg.reshape(-1,C), t) * 100/float(model.logit_scale)).view(C,-1).sum(1)
            cl = torch.zeros(C)
            for ch in ev.split(64):
                lg = model(ch)
                for t in range(C):
                    cl[t] += (margin(lg, torch.full((ch.shape[0],), t)) * 100/float(model.logit_scale)).sum()
            out.append((B, hits/256, ls/256, cl/256))
    return out

t0 = time.time()
a = run(clf); b = run(ref)
print("time", round(time.time()-t0,1))
for (B, asr, l, cl), (_, rasr, rl, _) in zip(a, b):
    dr = (cl - l).tolist(); dmed = statistics.median(dr); dmad = statistics.median(abs(v-dmed) for v in dr)
    zd = [(v-dmed)/(1.4826*max(dmad,1.0)) for v in dr]
    topd = sorted(range(C), key=lambda c: -zd[c])[:2]
    print("   loss-drop top", [(clf.class_names[c][:12], round(zd[c],2)) for c in topd])
    gain = (rl - l).tolist()
    med = statistics.median(gain); mad = statistics.median(abs(v-med) for v in gain)
    z = [(v-med)/(1.4826*max(mad,1.0)) for v in gain]
    top = sorted(range(C), key=lambda c: -z[c])[:3]
    ag = (asr - rasr).tolist(); amed = statistics.median(ag); amad = statistics.median(abs(v-amed) for v in ag)
    za = [(v-amed)/(1.4826*max(amad,0.05)) for v in ag]
    topa = sorted(range(C), key=lambda c: -za[c])[:2]
    print("   asr-gain top", [(clf.class_names[c][:12], round(za[c],2)) for c in topa], "clean max z", round(max(z),2))
    print(f"B={B:.3f}", "top", [(clf.class_names[c][:12], round(z[c],2), round(float(asr[c]),2), round(float(rasr[c]),2)) for c in top])
