// A bfloat16 matrix product for XLA:CPU through oneDNN, as an XLA FFI handler.
//
// XLA:CPU (jaxlib 0.10.2) computes a bfloat16 dot by converting both operands to float32 and
// running a float32 product, so it is never faster than float32 and a CPU's bfloat16 dot-product
// instructions (avx512_bf16, AMX) sit idle. oneDNN's matmul uses them.
//
// C[M, N] = op(A) op(B), op(X) = X or X^T by the attributes trans_a / trans_b, with A, B row-major
// bfloat16 and C bfloat16 or float32 (whichever buffer XLA hands in). A transpose is a stride, never
// a copy, so the two gradients of a dense layer (dX = dY W^T, dW = X^T dY) read the forward's arrays
// as they are. Accumulation is float32 inside oneDNN either way.
//
// Primitives are built once per (shape, transposes, output type) and reused; oneDNN threads with
// its own OpenMP pool on the calling thread. XLA calls the handler from several threads at once
// (one per device of a mesh), so each call brings its own scratchpad: oneDNN's default one is
// shared by every primitive of the process (an 8-device gradient came out wrong once with it).

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool>;  // M, N, K, ta, tb, f32 out

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::memory::desc Desc(int64_t rows, int64_t cols, bool transposed, dnnl::memory::data_type t) {
  // The logical [rows, cols] matrix; stored transposed means [cols, rows] row-major.
  dnnl::memory::dims strides = transposed ? dnnl::memory::dims{1, rows}
                                          : dnnl::memory::dims{cols, 1};
  return dnnl::memory::desc({rows, cols}, t, strides);
}

struct Planned {
  dnnl::matmul matmul;
  dnnl::memory::desc scratchpad;
};

const Planned& Primitive(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Planned>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[key];
  if (!slot) {
    auto [m, n, k, ta, tb, f32_out] = key;
    using dt = dnnl::memory::data_type;
    auto src = Desc(m, k, ta, dt::bf16), weights = Desc(k, n, tb, dt::bf16),
         dst = Desc(m, n, false, f32_out ? dt::f32 : dt::bf16);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR >= 3
    dnnl::matmul::primitive_desc pd(Engine(), src, weights, dst, attr);
#else  // Debian 12's libdnnl-dev is 2.x, where a primitive is described before it is planned
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), attr, Engine());
#endif
    slot = std::make_unique<Planned>(Planned{dnnl::matmul(pd), pd.scratchpad_desc()});
  }
  return *slot;
}

ffi::Error Matmul(ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b, ffi::Result<ffi::AnyBuffer> c,
                  bool trans_a, bool trans_b) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return ffi::Error::InvalidArgument("bf16 matmul takes two-dimensional operands");
  }
  int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n) {
    return ffi::Error::InvalidArgument("bf16 matmul operand shapes do not agree");
  }
  bool f32_out = c->element_type() == ffi::F32;
  if (!f32_out && c->element_type() != ffi::BF16) {
    return ffi::Error::InvalidArgument("bf16 matmul writes bfloat16 or float32");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  try {
    using dt = dnnl::memory::data_type;
    dnnl::memory ma(Desc(m, k, trans_a, dt::bf16), Engine(), a.untyped_data());
    dnnl::memory mb(Desc(k, n, trans_b, dt::bf16), Engine(), b.untyped_data());
    dnnl::memory mc(Desc(m, n, false, f32_out ? dt::f32 : dt::bf16), Engine(),
                    c->untyped_data());
    const Planned& planned = Primitive(Key{m, n, k, trans_a, trans_b, f32_out});
    std::vector<uint8_t> scratch(planned.scratchpad.get_size());
    dnnl::memory ms(planned.scratchpad, Engine(), scratch.data());
    dnnl::stream stream(Engine());
    planned.matmul.execute(stream, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb},
                                    {DNNL_ARG_DST, mc}, {DNNL_ARG_SCRATCHPAD, ms}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN matmul failed: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoraJaxBf16Matmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
