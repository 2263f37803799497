// Times the compiled attention kernel's per-pair functions on one core, without XLA around them:
// one (batch row, head) pair of a [T, H, K] layout, forward and backward, best of 5 rounds.
// Built and run by bench/attention_kernel_bench.py --harness (it passes -DKERNEL=<source>).
#include KERNEL

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const int64_t time = 512, heads = 4, dim = 64, reps = 100;
  const int64_t block = argc > 1 ? std::atoi(argv[1]) : 64;
  Matrix q = Matrix::Random(time, heads * dim), k = Matrix::Random(time, heads * dim),
         v = Matrix::Random(time, heads * dim), dout = Matrix::Random(time, heads * dim),
         o(time, heads * dim), dq(time, heads * dim), dk(time, heads * dim),
         dv(time, heads * dim);
  std::vector<float> lse(time);
  const Eigen::OuterStride<> stride(heads * dim);
  auto in = [&](Matrix& m) { return ConstView(m.data(), time, dim, stride); };
  auto out = [&](Matrix& m) { return View(m.data(), time, dim, stride); };
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  double forward = 1e9, backward = 1e9;
  for (int round = 0; round < 5; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
      ForwardPair(in(q), in(k), in(v), out(o), lse.data(), block, scale);
    }
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
      BackwardPair(in(q), in(k), in(v), in(o), lse.data(), in(dout), out(dq), out(dk), out(dv),
                   block, scale);
    }
    auto t2 = std::chrono::steady_clock::now();
    forward = std::min(forward, std::chrono::duration<double>(t1 - t0).count() / reps);
    backward = std::min(backward, std::chrono::duration<double>(t2 - t1).count() / reps);
  }
  double keys = 0;  // summed over the query blocks: the work the kernel does, masked part included
  for (int64_t start = 0; start < time; start += block) keys += std::min(start + block, time);
  const double matmul = 2.0 * block * keys * dim;  // one [block, keys] x [keys, dim] product
  std::printf("T=%ld, head_dim=%ld, block %ld: forward %.0f us (%.0f GFLOP/s), backward %.0f us "
              "(%.0f GFLOP/s) a pair on one core\n", time, dim, block, forward * 1e6,
              2 * matmul / forward / 1e9, backward * 1e6, 5 * matmul / backward / 1e9);
}
