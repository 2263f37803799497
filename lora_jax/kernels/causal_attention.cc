// Causal self-attention for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Arrays are float32 [batch, time, heads, head_dim], read and written in place through strided
// views, so the heads-first transposes, key-prefix slices and concatenations that the jnp kernel
// costs never happen. Each (batch row, head) pair is one task on XLA's intra-op thread pool. The
// matmuls are Eigen's (single-threaded per task); the softmax is fused around them in cache.
//
// Forward (per pair, per block of `block` queries over the keys up to the block's end):
//   S = scale * Q_b K_p^T, masked; m = max S; P = exp(S - m); O_b = (P V_p) / sum P;
//   lse = m + log sum P.
// Backward (flash attention's, from q, k, v, o, lse, dO):
//   D = sum_k dO * O; P = exp(scale * Q_b K_p^T - lse); dV_p += P^T dO_b; dP = dO_b V_p^T;
//   dS = P * (dP - D) * scale; dQ_b = dS K_p; dK_p += dS^T Q_b.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>

#include <Eigen/Core>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::Matrix<float, Eigen::Dynamic, 1>;
using View = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
using ConstView = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;

struct Shape {
  int64_t batch, time, heads, dim;
  int64_t pairs() const { return batch * heads; }
  int64_t offset(int64_t pair) const {  // of (row, head)'s first element
    return (pair / heads) * time * heads * dim + (pair % heads) * dim;
  }
  int64_t stride() const { return heads * dim; }
};

ffi::Error ReadShape(const ffi::Buffer<ffi::F32>& x, Shape* shape) {
  auto dims = x.dimensions();
  if (dims.size() != 4) {
    return ffi::Error::InvalidArgument("causal attention takes [batch, time, heads, head_dim]");
  }
  *shape = Shape{dims[0], dims[1], dims[2], dims[3]};
  return ffi::Error::Success();
}

ConstView In(const ffi::Buffer<ffi::F32>& x, const Shape& s, int64_t pair) {
  return ConstView(x.typed_data() + s.offset(pair), s.time, s.dim,
                   Eigen::OuterStride<>(s.stride()));
}

View Out(ffi::ResultBuffer<ffi::F32>& x, const Shape& s, int64_t pair) {
  return View(x->typed_data() + s.offset(pair), s.time, s.dim, Eigen::OuterStride<>(s.stride()));
}

// Runs body(i) for i in [0, n) on the calling thread and on the pool's threads. The caller takes
// tasks too, so it never waits on a pool that is busy elsewhere; a helper that starts after every
// task is taken finds none and returns.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &body] {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      body(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->finished.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->finished.wait(lock, [&] { return state->done.load() == n; });
}

using Block = Eigen::Map<Matrix>;

// Scratch for one task, sized once: the [rows, keys] score blocks change shape with every query
// block, and re-allocating them (128 KiB, glibc's mmap threshold) cost page faults on every block
// (the backward pass took 15% longer). Eigen's own allocation, aligned to its widest packet: its
// vectorised sums start at an address-dependent peel, so a plain malloc'd buffer, aligned one
// way in one call and another way in the next, made results differ in the last bit run to run.
struct Scratch {
  explicit Scratch(int64_t size) : data(size) {}
  Block Take(int64_t rows, int64_t cols) {
    Block block(data.data() + used, rows, cols);
    used += rows * cols;
    return block;
  }
  Vector data;
  int64_t used = 0;
};

// Unscaled logits of queries [start, start + rows) over keys [0, start + rows).
void Logits(const ConstView& q, const ConstView& k, int64_t start, int64_t rows, Block* logits) {
  logits->noalias() = q.middleRows(start, rows) * k.topRows(start + rows).transpose();
}

// Softmax rows are walked one at a time: Eigen vectorises exp over a contiguous row, not over a
// column-broadcast expression of a row-major matrix (13x slower measured, scalar exp).
void ForwardPair(const ConstView& q, const ConstView& k, const ConstView& v, View o, float* lse,
                 int64_t block, float scale) {
  const int64_t time = q.rows(), dim = q.cols();
  Scratch scratch(block * time + block * dim);
  float* scores = scratch.Take(block, time).data();
  float* out = scratch.Take(block, dim).data();
  Vector sum(block);
  for (int64_t start = 0; start < time; start += block) {
    const int64_t rows = std::min(block, time - start), keys = start + rows;
    Block logits(scores, rows, keys), o_b(out, rows, dim);
    Logits(q, k, start, rows, &logits);
    for (int64_t i = 0; i < rows; ++i) {  // query start + i sees keys 0..start + i
      auto seen = logits.row(i).head(start + i + 1).array();
      const float max = seen.maxCoeff();
      seen = ((seen - max) * scale).exp();
      logits.row(i).tail(rows - 1 - i).setZero();
      sum[i] = seen.sum();
      lse[start + i] = max * scale + std::log(sum[i]);
    }
    // Normalised after the product with V: a [rows, dim] division, not [rows, keys].
    o_b.noalias() = logits * v.topRows(keys);
    for (int64_t i = 0; i < rows; ++i) o.row(start + i) = o_b.row(i) / sum[i];
  }
}

void BackwardPair(const ConstView& q, const ConstView& k, const ConstView& v, const ConstView& o,
                  const float* lse, const ConstView& dout, View dq, View dk, View dv,
                  int64_t block, float scale) {
  const int64_t time = q.rows(), dim = q.cols();
  Scratch scratch(2 * time * dim + 2 * block * time);
  Block dk_acc = scratch.Take(time, dim), dv_acc = scratch.Take(time, dim);
  dk_acc.setZero();
  dv_acc.setZero();
  float* probs_data = scratch.Take(block, time).data();
  float* dlogits_data = scratch.Take(block, time).data();
  // sum_s dP * P over the keys equals sum_k dO * O over the head dimension.
  Vector delta(time);
  for (int64_t t = 0; t < time; ++t) delta[t] = dout.row(t).dot(o.row(t));
  for (int64_t start = 0; start < time; start += block) {
    const int64_t rows = std::min(block, time - start), keys = start + rows;
    Block probs(probs_data, rows, keys), dlogits(dlogits_data, rows, keys);
    Logits(q, k, start, rows, &probs);
    for (int64_t i = 0; i < rows; ++i) {
      auto seen = probs.row(i).head(start + i + 1).array();
      seen = (seen * scale - lse[start + i]).exp();
      probs.row(i).tail(rows - 1 - i).setZero();
    }
    dv_acc.topRows(keys).noalias() += probs.transpose() * dout.middleRows(start, rows);
    dlogits.noalias() = dout.middleRows(start, rows) * v.topRows(keys).transpose();
    for (int64_t i = 0; i < rows; ++i) {
      dlogits.row(i).array() =
          probs.row(i).array() * (dlogits.row(i).array() - delta[start + i]) * scale;
    }
    dq.middleRows(start, rows).noalias() = dlogits * k.topRows(keys);
    dk_acc.topRows(keys).noalias() += dlogits.transpose() * q.middleRows(start, rows);
  }
  dk = dk_acc;
  dv = dv_acc;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse, int64_t block) {
  Shape s;
  if (auto error = ReadShape(q, &s); error.failure()) return error;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  ParallelFor(pool, s.pairs(), [&](int64_t pair) {
    ForwardPair(In(q, s, pair), In(k, s, pair), In(v, s, pair), Out(out, s, pair),
                lse->typed_data() + pair * s.time, block, scale);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    int64_t block) {
  Shape s;
  if (auto error = ReadShape(q, &s); error.failure()) return error;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  ParallelFor(pool, s.pairs(), [&](int64_t pair) {
    BackwardPair(In(q, s, pair), In(k, s, pair), In(v, s, pair), In(out, s, pair),
                 lse.typed_data() + pair * s.time, In(dout, s, pair), Out(dq, s, pair),
                 Out(dk, s, pair), Out(dv, s, pair), block, scale);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoraJaxCausalAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoraJaxCausalAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("block"));
