# attention_fused_model.py - lane-level model of cuda/attention.cu's
# attention_fused_kernel index math, for debugging it without (or before) a
# GPU: every lane's fragment loads (Q from global, K rows from shared memory,
# V by ldmatrix.x4.trans), mma.sync m16n8k16 D/A/B layouts as the PTX ISA
# documents them, the causal and ragged-tile masks, the two passes (online max
# and sum, then P = bf16(exp(s - m) / l) and P V) and the [T, NH*HS] stores,
# in numpy (f64 dot products), against a straight reference with the CPU
# twin's rounding points (attention_forward_cpu). It checks the kernel's
# indexing against the documented layouts, not the hardware: a device run of
# tests/test_kernels (attention_forward) is what counts.
# Run: ~/.cache/doneshot/venv/bin/python tests/attention_fused_model.py (~10 s;
# not part of make test). Exit status: the number of failed shapes.
import numpy as np, sys
def bf(x):  # round to bf16 (RNE) as float32
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)
L = np.arange(32); G = L >> 2; TQ = L & 3
def mma(d, a, b):  # d[32][4], a[32][4][2], b[32][2][2]
    A = np.zeros((16, 16), np.float32); B = np.zeros((16, 8), np.float32)
    for l in range(32):
        g, t = G[l], TQ[l]
        A[g, 2*t:2*t+2] = a[l][0]; A[g+8, 2*t:2*t+2] = a[l][1]
        A[g, 2*t+8:2*t+10] = a[l][2]; A[g+8, 2*t+8:2*t+10] = a[l][3]
        B[2*t:2*t+2, g] = b[l][0]; B[2*t+8:2*t+10, g] = b[l][1]
    D = A.astype(np.float64) @ B.astype(np.float64)
    for l in range(32):
        g, t = G[l], TQ[l]
        d[l][0] += D[g, 2*t]; d[l][1] += D[g, 2*t+1]; d[l][2] += D[g+8, 2*t]; d[l][3] += D[g+8, 2*t+1]
def ldmatrix_x4_trans(smem, addrs):  # addrs[l] = (row, col) of a row start; returns r[32][4][2]
    r = np.zeros((32, 4, 2), np.float32)
    for i in range(4):
        M = np.stack([smem[addrs[8*i+j][0], addrs[8*i+j][1]:addrs[8*i+j][1]+8] for j in range(8)])
        for l in range(32):
            r[l][i] = [M[2*TQ[l], G[l]], M[2*TQ[l]+1, G[l]]]
    return r
def kernel(q, k, v, T, NH, NKV, HS, BM=64, BN=64):
    out = np.full((T, NH*HS), np.nan, np.float32)
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    rep = NH // NKV
    nqt = (T + BM - 1) // BM
    for h in range(NH):
        kvh = h // rep
        Q = q[:, h*HS:(h+1)*HS]; K = k[:, kvh*HS:(kvh+1)*HS]; V = v[:, kvh*HS:(kvh+1)*HS]
        def tile(X, kt):
            t_ = np.zeros((BN, HS), np.float32); n = min(BN, T - kt*BN); t_[:n] = X[kt*BN:kt*BN+n]; return t_
        for qt in range(nqt):
            for w in range(4):
                r0 = qt*BM + w*16 + G; r1 = r0 + 8
                qf = np.zeros((32, HS//16, 4, 2), np.float32)
                for kk in range(HS//16):
                    c = kk*16 + 2*TQ
                    for l in range(32):
                        for idx, (r, cc) in enumerate([(r0[l], c[l]), (r1[l], c[l]), (r0[l], c[l]+8), (r1[l], c[l]+8)]):
                            qf[l, kk, idx] = Q[r, cc:cc+2] if r < T else 0
                def scores(Ks, kt):
                    s = np.zeros((8, 32, 4), np.float64)
                    for kk in range(HS//16):
                        for j in range(8):
                            b = np.zeros((32, 2, 2), np.float32)
                            for l in range(32):
                                row = j*8 + G[l]; cc = kk*16 + 2*TQ[l]
                                b[l][0] = Ks[row, cc:cc+2]; b[l][1] = Ks[row, cc+8:cc+10]
                            mma(s[j], qf[:, kk], b)
                    s = s.astype(np.float32)
                    for j in range(8):
                        for e in range(4):
                            key = kt*BN + j*8 + 2*TQ + (e & 1); row = r0 + (e >> 1)*8
                            x = (s[j][:, e] * scale).astype(np.float32)
                            s[j][:, e] = np.where(key > row, -np.inf, x)
                    return s
                m = np.full((32, 2), -np.inf, np.float32); l_ = np.zeros((32, 2), np.float32)
                for kt in range(qt+1):
                    s = scores(tile(K, kt), kt)
                    for hr in range(2):
                        mx = np.max(np.maximum(s[:, :, 2*hr], s[:, :, 2*hr+1]), axis=0)
                        mx = np.maximum(mx, mx[L ^ 1]); mx = np.maximum(mx, mx[L ^ 2])
                        mn = np.maximum(m[:, hr], mx)
                        with np.errstate(invalid='ignore'):
                            add = np.sum(np.exp(s[:, :, 2*hr] - mn) + np.exp(s[:, :, 2*hr+1] - mn), axis=0)
                            l_[:, hr] = l_[:, hr] * np.exp(m[:, hr] - mn) + add
                        m[:, hr] = mn
                l_ = l_ + l_[L ^ 1]; l_ = l_ + l_[L ^ 2]; inv = (1.0 / l_).astype(np.float32)
                o = np.zeros((HS//8, 32, 4), np.float64)
                for kt in range(qt+1):
                    s = scores(tile(K, kt), kt); Vs = tile(V, kt)
                    pf = np.zeros((4, 32, 4, 2), np.float32)
                    for kc in range(4):
                        for half in range(2):
                            p = np.zeros((32, 4), np.float32)
                            for e in range(4):
                                x = s[2*kc+half][:, e]
                                with np.errstate(invalid='ignore'):
                                    p[:, e] = np.where(x == -np.inf, 0, bf(np.exp(x - m[:, e >> 1]) * inv[:, e >> 1]))
                            pf[kc, :, 2*half] = p[:, 0:2]; pf[kc, :, 2*half+1] = p[:, 2:4]
                    for kc in range(4):
                        for np_ in range(HS//16):
                            addrs = [(kc*16 + (ll & 7) + ((ll >> 3) & 1)*8, np_*16 + (ll >> 4)*8) for ll in range(32)]
                            r = ldmatrix_x4_trans(Vs, addrs)
                            mma(o[2*np_], pf[kc], r[:, 0:2]); mma(o[2*np_+1], pf[kc], r[:, 2:4])
                for n in range(HS//8):
                    for l in range(32):
                        c = h*HS + n*8 + 2*TQ[l]
                        if r0[l] < T: out[r0[l], c:c+2] = bf(o[n][l][0:2])
                        if r1[l] < T: out[r1[l], c:c+2] = bf(o[n][l][2:4])
    return out
def ref(q, k, v, T, NH, NKV, HS):
    out = np.zeros((T, NH*HS), np.float32); rep = NH // NKV
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    for h in range(NH):
        g = h // rep
        S = (q[:, h*HS:(h+1)*HS].astype(np.float64) @ k[:, g*HS:(g+1)*HS].T.astype(np.float64)).astype(np.float32) * scale
        for i in range(T):
            e = np.exp(S[i, :i+1] - S[i, :i+1].max()); p = bf(e * np.float32(1.0 / e.sum()))
            out[i, h*HS:(h+1)*HS] = bf(p.astype(np.float64) @ v[:i+1, g*HS:(g+1)*HS].astype(np.float64))
    return out
rng = np.random.default_rng(1)
fails = 0
for (T, NH, NKV, HS) in [(1, 2, 2, 64), (17, 2, 1, 64), (70, 4, 1, 64), (130, 2, 2, 128)]:
    q = bf(rng.uniform(-2, 2, (T, NH*HS))); k = bf(rng.uniform(-2, 2, (T, NKV*HS))); v = bf(rng.uniform(-1, 1, (T, NKV*HS)))
    got = kernel(q, k, v, T, NH, NKV, HS); want = ref(q, k, v, T, NH, NKV, HS)
    bad = ~(np.abs(got - want) <= 4e-3 + 2e-2 * np.abs(want))
    print(f"T={T} NH={NH} NKV={NKV} HS={HS}: max abs diff {np.nanmax(np.abs(got-want)):.3g}, nan {np.isnan(got).sum()}, out of tol {bad.sum()}")
    fails += int(bad.sum() > 0)
print(f"{4 - fails} passed, {fails} failed")
sys.exit(fails)
