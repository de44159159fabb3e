#include "loom/nn/mixer/selective_scan.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace loom {

std::pair<torch::Tensor, torch::Tensor> selective_scan_reference(const torch::Tensor& u, const torch::Tensor& delta,
                                                                 const torch::Tensor& A, const torch::Tensor& Bm,
                                                                 const torch::Tensor& Cm, const torch::Tensor& D,
                                                                 const torch::Tensor& h0) {
  const int64_t b = u.size(0), t = u.size(1), di = u.size(2), n = A.size(1);
  auto h = h0.defined() ? h0.to(torch::kFloat) : torch::zeros({b, di, n}, u.options().dtype(torch::kFloat));
  std::vector<torch::Tensor> ys;
  for (int64_t s = 0; s < t; ++s) {
    auto dt = delta.select(1, s).to(torch::kFloat).unsqueeze(-1);  // [B, Di, 1]
    auto decay = torch::exp(dt * A);                               // [B, Di, N]
    auto input = dt * Bm.select(1, s).to(torch::kFloat).unsqueeze(1) *
                 u.select(1, s).to(torch::kFloat).unsqueeze(-1);  // [B, Di, N]
    h = decay * h + input;
    ys.push_back((h * Cm.select(1, s).to(torch::kFloat).unsqueeze(1)).sum(-1));  // [B, Di]
  }
  auto y = torch::stack(ys, 1) + u.to(torch::kFloat) * D;  // [B, T, Di]
  return {y, h};
}

namespace {

// Splits the Di channels into one chunk per thread; each chunk owns its channels' outputs and
// gradients of A and D, and accumulates dB, dC (sums over channels) in its own buffer.
template <class F>
void for_channel_chunks(int64_t di, F&& body) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), di));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) body(c, di * c / chunks, di * (c + 1) / chunks);
  });
}

int64_t channel_chunks(int64_t di) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), di)); }

class SelectiveScanFunction : public torch::autograd::Function<SelectiveScanFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::Tensor u,
                                                torch::Tensor delta, torch::Tensor A, torch::Tensor Bm,
                                                torch::Tensor Cm, torch::Tensor D, torch::Tensor h0) {
    u = u.to(torch::kFloat).contiguous();
    delta = delta.to(torch::kFloat).contiguous();
    A = A.to(torch::kFloat).contiguous();
    Bm = Bm.to(torch::kFloat).contiguous();
    Cm = Cm.to(torch::kFloat).contiguous();
    D = D.to(torch::kFloat).contiguous();
    const int64_t b = u.size(0), t = u.size(1), di = u.size(2), n = A.size(1);
    h0 = h0.to(torch::kFloat).contiguous();
    auto y = torch::empty({b, t, di}, u.options());
    auto h_last = torch::empty({b, di, n}, u.options());
    const float *pu = u.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pa = A.data_ptr<float>(),
                *pb = Bm.data_ptr<float>(), *pc = Cm.data_ptr<float>(), *pD = D.data_ptr<float>(),
                *ph0 = h0.data_ptr<float>();
    float *py = y.data_ptr<float>(), *ph = h_last.data_ptr<float>();
    for_channel_chunks(di, [&](int64_t, int64_t d0, int64_t d1) {
      std::vector<float> h(n);
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t d = d0; d < d1; ++d) {
          for (int64_t k = 0; k < n; ++k) h[k] = ph0[(bi * di + d) * n + k];
          for (int64_t s = 0; s < t; ++s) {
            const int64_t x = (bi * t + s) * di + d;
            const float dt = pd[x], uu = pu[x];
            const float* bs = pb + (bi * t + s) * n;
            const float* cs = pc + (bi * t + s) * n;
            float acc = 0;
            for (int64_t k = 0; k < n; ++k) {
              h[k] = std::exp(dt * pa[d * n + k]) * h[k] + dt * bs[k] * uu;
              acc += cs[k] * h[k];
            }
            py[x] = acc + pD[d] * uu;
          }
          for (int64_t k = 0; k < n; ++k) ph[(bi * di + d) * n + k] = h[k];
        }
    });
    ctx->save_for_backward({u, delta, A, Bm, Cm, D, h0});
    ctx->mark_non_differentiable({h_last});
    return {y, h_last};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &u = saved[0], &delta = saved[1], &A = saved[2], &Bm = saved[3], &Cm = saved[4], &D = saved[5],
               &h0 = saved[6];
    auto gy = grads[0].to(torch::kFloat).contiguous();
    const int64_t b = u.size(0), t = u.size(1), di = u.size(2), n = A.size(1);
    const int64_t chunks = channel_chunks(di);
    auto gu = torch::empty_like(u), gdelta = torch::empty_like(delta);
    auto gA = torch::zeros_like(A), gD = torch::zeros_like(D);
    auto gB_parts = torch::zeros({chunks, b, t, n}, u.options());
    auto gC_parts = torch::zeros({chunks, b, t, n}, u.options());
    const float *pu = u.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pa = A.data_ptr<float>(),
                *pb = Bm.data_ptr<float>(), *pc = Cm.data_ptr<float>(), *pD = D.data_ptr<float>(),
                *ph0 = h0.data_ptr<float>(), *pgy = gy.data_ptr<float>();
    float *pgu = gu.data_ptr<float>(), *pgd = gdelta.data_ptr<float>(), *pgA = gA.data_ptr<float>(),
          *pgD = gD.data_ptr<float>();
    for_channel_chunks(di, [&](int64_t chunk, int64_t d0, int64_t d1) {
      float* gB = gB_parts.data_ptr<float>() + chunk * b * t * n;
      float* gC = gC_parts.data_ptr<float>() + chunk * b * t * n;
      std::vector<float> hs((t + 1) * n), dh(n);  // hs[s + 1] = h after step s; hs[0] = h0
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t d = d0; d < d1; ++d) {
          const float* a = pa + d * n;
          for (int64_t k = 0; k < n; ++k) hs[k] = ph0[(bi * di + d) * n + k];
          for (int64_t s = 0; s < t; ++s) {  // recompute the states
            const int64_t x = (bi * t + s) * di + d;
            const float dt = pd[x], uu = pu[x];
            const float* bs = pb + (bi * t + s) * n;
            for (int64_t k = 0; k < n; ++k) hs[(s + 1) * n + k] = std::exp(dt * a[k]) * hs[s * n + k] + dt * bs[k] * uu;
          }
          std::fill(dh.begin(), dh.end(), 0.0f);
          for (int64_t s = t - 1; s >= 0; --s) {
            const int64_t x = (bi * t + s) * di + d;
            const float g = pgy[x], dt = pd[x], uu = pu[x];
            const float* bs = pb + (bi * t + s) * n;
            const float* cs = pc + (bi * t + s) * n;
            float* gbs = gB + (bi * t + s) * n;
            float* gcs = gC + (bi * t + s) * n;
            pgD[d] += g * uu;
            float du = g * pD[d], ddt = 0;
            for (int64_t k = 0; k < n; ++k) {
              const float h = hs[(s + 1) * n + k], h_prev = hs[s * n + k];
              gcs[k] += g * h;
              dh[k] += g * cs[k];  // dL/dh_s
              const float decay = std::exp(dt * a[k]);
              const float d_decay = dh[k] * h_prev;  // through decay * h_prev
              ddt += d_decay * decay * a[k] + dh[k] * bs[k] * uu;
              pgA[d * n + k] += d_decay * decay * dt;
              gbs[k] += dh[k] * dt * uu;
              du += dh[k] * dt * bs[k];
              dh[k] *= decay;  // dL/dh_{s-1}
            }
            pgu[x] = du;
            pgd[x] = ddt;
          }
        }
    });
    return {gu, gdelta, gA, gB_parts.sum(0), gC_parts.sum(0), gD, torch::Tensor()};
  }
};

}  // namespace

std::pair<torch::Tensor, torch::Tensor> selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                                       const torch::Tensor& A, const torch::Tensor& Bm,
                                                       const torch::Tensor& Cm, const torch::Tensor& D,
                                                       const torch::Tensor& h0) {
  // Autograd functions take defined tensors only: an absent h0 becomes explicit zeros.
  auto start =
      h0.defined() ? h0.detach() : torch::zeros({u.size(0), u.size(2), A.size(1)}, u.options().dtype(torch::kFloat));
  auto out = SelectiveScanFunction::apply(u, delta, A, Bm, Cm, D, start);
  return {out[0], out[1]};
}

}  // namespace loom
