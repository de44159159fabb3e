// Fourier token mixing (Lee-Thorp et al. 2022, "FNet: Mixing Tokens with Fourier Transforms"):
// the attention sublayer is replaced by the real part of a 2-D discrete Fourier transform over
// the sequence and hidden dimensions, y = Re(FFT_seq(FFT_hidden(x))). No parameters, no
// position hooks, and bidirectional by construction (every output mixes every position), so it
// exists in encoders only.
//
// Two choices the paper leaves open: padding positions are zeroed before the transform, so they
// add nothing; and the transform is orthonormal (scaled by 1/sqrt(T * d_model)), so the output
// keeps the input's scale under pre-norm (the paper's post-norm layer renormalizes anyway). The
// transform runs in fp32 (no bf16 FFT on CPU). Its output still depends on the padded length T,
// which is why encoder batches are padded to model.max_seq_len.
#include "loom/nn/mixer.h"

namespace loom {
namespace {

class FNetImpl : public MixerImpl {
 public:
  explicit FNetImpl(const ModelConfig&) {}

  // x: [B, T, d_model] -> [B, T, d_model]
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx) override {
    auto h = x.to(torch::kFloat);
    if (ctx.padding.defined()) h = h.masked_fill(ctx.padding.unsqueeze(-1), 0.0);
    return torch::real(torch::fft::fft2(h, c10::nullopt, {-2, -1}, "ortho")).to(x.scalar_type());
  }

  MixerState make_cache(int64_t, int64_t, torch::TensorOptions) override {
    fail("mixer 'fnet' is bidirectional and has no incremental decoding");
  }
};

}  // namespace

void register_fnet(Registry<MixerFactory>& r) {
  r.add(BlockInfo("fnet",
                  "Fourier mixing: real part of a 2-D FFT over sequence and hidden (no parameters; encoders only)",
                  "Lee-Thorp et al. 2022, FNet: Mixing Tokens with Fourier Transforms")
            .with_traits({"bidirectional"})
            .fast_engine(false),
        [](const ModelConfig& c, int64_t) { return std::make_shared<FNetImpl>(c); });
}

}  // namespace loom
