// 2-D float32 convolution and batch normalization on the CPU through oneDNN, as five XLA FFI
// handlers for JAX (vae_jax/onednn_conv.py registers and calls them; CMakeLists.txt builds this
// file into the package).
//
//   VaeOnednnConvFwd          (x, w)   -> y    y  = conv(x, w)
//   VaeOnednnConvBwdData      (dy, w)  -> dx   dx = d conv / dx applied to dy (the result's shape gives x's)
//   VaeOnednnConvBwdWeights   (x, dy)  -> dw   dw = d conv / dw applied to dy (the result's shape gives w's)
//
//   VaeOnednnBnFwd   (x, scale, shift)          -> (y, mean, var)       training-mode batch norm
//   VaeOnednnBnBwd   (x, dy, scale, mean, var)  -> (dx, dscale, dshift) its backward
//
// Layouts as Flax's: activations NHWC (x: N,H,W,C; y: N,OH,OW,O), kernel HWIO (KH,KW,C,O).
// Attributes (int64): stride (both axes), pad_lh, pad_hh, pad_lw, pad_hw: explicit padding
// ((lo_h, hi_h), (lo_w, hi_w)) as jax.lax.conv_general_dilated takes it; OH = (H + lo + hi - KH) / s + 1.
//
// The oneDNN primitives are created once per geometry and kept in a static map (creating one
// is far more expensive than running it). Calls are serialized by one mutex: every primitive
// already runs on all cores (oneDNN's OpenMP runtime), and serializing keeps the shared cache,
// stream and workspace safe when XLA runs two calls at once. oneDNN picks its own (blocked)
// layout for the kernel, reordered from/to HWIO on each call (see LayoutPolicy). The workspace,
// one buffer grown to the largest need, holds that reordered kernel and the scratchpad, which is
// ours (scratchpad_mode::user): oneDNN's own (library mode) is per thread and sized when a
// primitive is created, which crashes when XLA executes it on another thread.
//
// Batch normalization (float32 attribute eps): y = (x - mean) * rsqrt(var + eps) * scale + shift
// per channel, mean and var the batch statistics over N, H, W (var biased: divided by N*H*W, as
// oneDNN computes it); x, y, dx, dy NHWC (N, H, W, C), the rest (C,). Same cache (its own map),
// mutex and workspace as the convolutions; no reorders (oneDNN's nhwc batch norm is native).
// Threads: VAE_ONEDNN_BN_THREADS (default 0: OpenMP's default, all cores; N: N threads). oneDNN's
// jit batch norm synchronizes its threads with a spinning barrier, so on a machine loaded past its
// cores a call can stall while one thread is descheduled: VAE_ONEDNN_BN_THREADS=1 avoids that
// (docs/speed.md has the measurements both ways).

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

extern "C" {  // GNU OpenMP (libgomp, which libdnnl links): the calling thread's thread count
int omp_get_max_threads();
void omp_set_num_threads(int);
}

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// Everything a primitive depends on: kind, N, C, H, W, O, KH, KW, OH, OW, stride, 4 paddings, layout policy.
using Key = std::array<int64_t, 16>;

struct Geometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow, stride, plh, phh, plw, phw;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static dnnl::stream stream(Engine());
  return stream;
}

memory::desc Act(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc);
}

memory::desc Ker(const Geometry& g) {  // oneDNN's dims are (O, I, KH, KW); the memory is HWIO
  return memory::desc({g.o, g.c, g.kh, g.kw}, memory::data_type::f32, memory::format_tag::hwio);
}

memory::desc Any(const memory::desc& d) { return memory::desc(d.get_dims(), d.get_data_type(), memory::format_tag::any); }

// Which tensors oneDNN may lay out its own way (then reordered from/to ours on every call):
// VAE_ONEDNN_LAYOUT=w (the kernel; the default), all (kernel and activations) or plain (none).
// With plain NHWC/HWIO everywhere oneDNN 3.2 falls back to its gemm-based backward passes: about
// 2x slower over the models' layers than with a blocked kernel (reordered on every call, cheap);
// "all" measured 5% slower than "w". Read on every call (it is part of the cache key), so a
// benchmark can switch it.
int64_t LayoutPolicy() {
  const char* v = std::getenv("VAE_ONEDNN_LAYOUT");
  if (v && std::strcmp(v, "plain") == 0) return 0;
  if (v && std::strcmp(v, "all") == 0) return 2;
  return 1;
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A primitive and, for each of its three tensors (0: x-like, 1: w-like, 2: y-like), the layout
// it wants and the reorder from ours (an input) or to ours (the output) when that differs.
struct Entry {
  dnnl::primitive prim;
  memory::desc scratch;
  std::array<memory::desc, 3> md;
  std::array<dnnl::reorder, 3> reorder;
  std::array<bool, 3> reordered{};
  std::array<int, 3> arg{};
  int out = 0;  // which tensor is the result
};

Entry MakeEntry(Kind kind, const Geometry& g, int64_t policy) {
  const auto alg = dnnl::algorithm::convolution_direct;
  const std::array<memory::desc, 3> user{Act(g.n, g.c, g.h, g.w), Ker(g), Act(g.n, g.o, g.oh, g.ow)};
  const memory::desc x = policy == 2 ? Any(user[0]) : user[0], w = policy >= 1 ? Any(user[1]) : user[1],
                     y = policy == 2 ? Any(user[2]) : user[2];
  const memory::dims s{g.stride, g.stride}, pl{g.plh, g.plw}, pr{g.phh, g.phw};
  dnnl::convolution_forward::primitive_desc fwd(Engine(), dnnl::prop_kind::forward_training, alg, x, w, y, s, pl,
                                                pr, UserScratchpad());
  Entry e;
  if (kind == kFwd) {
    e = {dnnl::convolution_forward(fwd), fwd.scratchpad_desc(), {fwd.src_desc(), fwd.weights_desc(), fwd.dst_desc()}};
    e.arg = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
    e.out = 2;
  } else if (kind == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), alg, x, w, y, s, pl, pr, fwd, UserScratchpad());
    e = {dnnl::convolution_backward_data(pd), pd.scratchpad_desc(),
         {pd.diff_src_desc(), pd.weights_desc(), pd.diff_dst_desc()}};
    e.arg = {DNNL_ARG_DIFF_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_DST};
    e.out = 0;
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(Engine(), alg, x, w, y, s, pl, pr, fwd, UserScratchpad());
    e = {dnnl::convolution_backward_weights(pd), pd.scratchpad_desc(),
         {pd.src_desc(), pd.diff_weights_desc(), pd.diff_dst_desc()}};
    e.arg = {DNNL_ARG_SRC, DNNL_ARG_DIFF_WEIGHTS, DNNL_ARG_DIFF_DST};
    e.out = 1;
  }
  for (int i = 0; i < 3; ++i) {
    if (e.md[i] == user[i]) continue;
    e.reordered[i] = true;
    e.reorder[i] = i == e.out ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), e.md[i], Engine(), user[i]))
                              : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user[i], Engine(), e.md[i]));
  }
  return e;
}

std::mutex g_mutex;  // guards everything below and every execution
std::map<Key, Entry> g_cache;
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
std::unique_ptr<void, FreeDeleter> g_work;
size_t g_work_size = 0;

char* Workspace(size_t bytes) {  // the scratchpad and the reordered tensors
  if (bytes > g_work_size) {
    size_t size = (bytes + 4095) / 4096 * 4096;
    g_work.reset(std::aligned_alloc(4096, size));
    g_work_size = g_work ? size : 0;
    if (!g_work) throw std::bad_alloc();
  }
  return static_cast<char*>(g_work.get());
}

size_t Aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

// Runs `kind` on the three buffers: x-like (N,H,W,C), w-like (KH,KW,C,O), y-like (N,OH,OW,O).
ffi::Error Run(Kind kind, const ffi::AnyBuffer::Dimensions& xd, const ffi::AnyBuffer::Dimensions& wd,
               const ffi::AnyBuffer::Dimensions& yd, void* x, void* w, void* y, int64_t stride, int64_t plh,
               int64_t phh, int64_t plw, int64_t phw) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn_conv: expected rank-4 NHWC activations and an HWIO kernel");
  Geometry g{xd[0], xd[3], xd[1], xd[2], wd[3], wd[0], wd[1], yd[1], yd[2], stride, plh, phh, plw, phw};
  if (yd[0] != g.n || wd[2] != g.c || yd[3] != g.o || stride < 1 ||
      (g.h + plh + phh - g.kh) / stride + 1 != g.oh || (g.w + plw + phw - g.kw) / stride + 1 != g.ow)
    return ffi::Error::InvalidArgument("onednn_conv: inconsistent shapes, stride or padding");
  void* out = kind == kFwd ? y : (kind == kBwdData ? x : w);
  size_t out_bytes = 4 * static_cast<size_t>(kind == kFwd       ? g.n * g.oh * g.ow * g.o
                                             : kind == kBwdData ? g.n * g.h * g.w * g.c
                                                                : g.kh * g.kw * g.c * g.o);
  if (g.n == 0 || g.c == 0 || g.o == 0 || g.oh <= 0 || g.ow <= 0) {  // nothing to sum: zeros
    if (out_bytes) std::memset(out, 0, out_bytes);
    return ffi::Error::Success();
  }
  const int64_t policy = LayoutPolicy();
  Key key{kind, g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, g.oh, g.ow, stride, plh, phh, plw, phw, policy};
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_cache.find(key);
    if (it == g_cache.end()) it = g_cache.emplace(key, MakeEntry(kind, g, policy)).first;
    const Entry& e = it->second;
    const std::array<memory::desc, 3> user{Act(g.n, g.c, g.h, g.w), Ker(g), Act(g.n, g.o, g.oh, g.ow)};
    const std::array<void*, 3> ptr{x, w, y};
    size_t bytes = Aligned(e.scratch.get_size());
    for (int i = 0; i < 3; ++i)
      if (e.reordered[i]) bytes += Aligned(e.md[i].get_size());
    char* work = Workspace(bytes);
    size_t offset = Aligned(e.scratch.get_size());
    std::unordered_map<int, memory> args;
    if (e.scratch.get_size()) args.emplace(DNNL_ARG_SCRATCHPAD, memory(e.scratch, Engine(), work));
    std::array<memory, 3> mine;
    for (int i = 0; i < 3; ++i) {
      memory um(user[i], Engine(), ptr[i]);
      if (e.reordered[i]) {
        mine[i] = memory(e.md[i], Engine(), work + offset);
        offset += Aligned(e.md[i].get_size());
        if (i != e.out) e.reorder[i].execute(Stream(), um, mine[i]);
      } else {
        mine[i] = um;
      }
      args.emplace(e.arg[i], mine[i]);
    }
    e.prim.execute(Stream(), args);
    if (e.reordered[e.out]) {
      memory um(user[e.out], Engine(), out);
      e.reorder[e.out].execute(Stream(), mine[e.out], um);
    }
    Stream().wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_conv: oneDNN error: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("onednn_conv: out of memory for the workspace");
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error ConvFwd(F32 x, F32 w, F32Out y, int64_t stride, int64_t plh, int64_t phh, int64_t plw, int64_t phw) {
  return Run(kFwd, x.dimensions(), w.dimensions(), y->dimensions(), x.typed_data(), w.typed_data(), y->typed_data(),
             stride, plh, phh, plw, phw);
}

ffi::Error ConvBwdData(F32 dy, F32 w, F32Out dx, int64_t stride, int64_t plh, int64_t phh, int64_t plw,
                       int64_t phw) {
  return Run(kBwdData, dx->dimensions(), w.dimensions(), dy.dimensions(), dx->typed_data(), w.typed_data(),
             dy.typed_data(), stride, plh, phh, plw, phw);
}

ffi::Error ConvBwdWeights(F32 x, F32 dy, F32Out dw, int64_t stride, int64_t plh, int64_t phh, int64_t plw,
                          int64_t phw) {
  return Run(kBwdWeights, x.dimensions(), dw->dimensions(), dy.dimensions(), x.typed_data(), dw->typed_data(),
             dy.typed_data(), stride, plh, phh, plw, phw);
}

// ---- batch normalization ----------------------------------------------------------------------

enum BnKind : int64_t { kBnFwd = 0, kBnBwd = 1 };

// kind, N, C, H, W, eps's bits, threads
using BnKey = std::array<int64_t, 7>;

int64_t BnThreads() {  // read on every call (part of the cache key), as LayoutPolicy
  const char* v = std::getenv("VAE_ONEDNN_BN_THREADS");
  if (!v || !*v) return 0;
  const long n = std::strtol(v, nullptr, 10);
  return n > 0 ? n : 0;
}

// Sets the calling thread's OpenMP thread count (which oneDNN reads when it creates a primitive,
// and runs it with) for a scope; 0 leaves it.
class OmpThreads {
 public:
  explicit OmpThreads(int64_t n) : prev_(omp_get_max_threads()), set_(n > 0) {
    if (set_) omp_set_num_threads(static_cast<int>(n));
  }
  ~OmpThreads() {
    if (set_) omp_set_num_threads(prev_);
  }
  OmpThreads(const OmpThreads&) = delete;
  OmpThreads& operator=(const OmpThreads&) = delete;

 private:
  int prev_;
  bool set_;
};

struct BnEntry {
  dnnl::primitive prim;
  memory::desc scratch;
};

memory::desc Vec(int64_t c) { return memory::desc({c}, memory::data_type::f32, memory::format_tag::x); }

dnnl::normalization_flags BnFlags() {
  return dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
}

BnEntry MakeBnEntry(BnKind kind, int64_t n, int64_t c, int64_t h, int64_t w, float eps) {
  const memory::desc x = Act(n, c, h, w);
  dnnl::batch_normalization_forward::primitive_desc fwd(Engine(), dnnl::prop_kind::forward_training, x, x, eps,
                                                        BnFlags(), UserScratchpad());
  if (fwd.workspace_desc().get_size() != 0)  // only with fuse_norm_relu, which we do not ask for
    throw dnnl::error(dnnl_unimplemented, "batch normalization wants a workspace");
  if (kind == kBnFwd) return {dnnl::batch_normalization_forward(fwd), fwd.scratchpad_desc()};
  dnnl::batch_normalization_backward::primitive_desc pd(Engine(), dnnl::prop_kind::backward, x, x, x, eps, BnFlags(),
                                                        fwd, UserScratchpad());
  return {dnnl::batch_normalization_backward(pd), pd.scratchpad_desc()};
}

std::map<BnKey, BnEntry> g_bn_cache;  // guarded by g_mutex

// Runs `kind` on x (N,H,W,C); `args` maps oneDNN argument ids to the buffers (activation-shaped
// for DNNL_ARG_SRC/DST/DIFF_SRC/DIFF_DST, (C,) for the rest).
ffi::Error RunBn(BnKind kind, const ffi::AnyBuffer::Dimensions& xd, float eps,
                 const std::array<std::pair<int, void*>, 8>& bufs, int nbufs) {
  if (xd.size() != 4) return ffi::Error::InvalidArgument("onednn_bn: expected a rank-4 NHWC input");
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3];
  if (n * h * w == 0 || c == 0) return ffi::Error::InvalidArgument("onednn_bn: empty input");
  if (!(eps >= 0.0f)) return ffi::Error::InvalidArgument("onednn_bn: eps must be >= 0");
  int32_t eps_bits;
  std::memcpy(&eps_bits, &eps, sizeof eps_bits);
  const int64_t threads = BnThreads();
  BnKey key{kind, n, c, h, w, eps_bits, threads};
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    OmpThreads omp(threads);
    auto it = g_bn_cache.find(key);
    if (it == g_bn_cache.end()) it = g_bn_cache.emplace(key, MakeBnEntry(kind, n, c, h, w, eps)).first;
    const BnEntry& e = it->second;
    const memory::desc act = Act(n, c, h, w), vec = Vec(c);
    std::unordered_map<int, memory> args;
    if (e.scratch.get_size())
      args.emplace(DNNL_ARG_SCRATCHPAD, memory(e.scratch, Engine(), Workspace(Aligned(e.scratch.get_size()))));
    for (int i = 0; i < nbufs; ++i) {
      const int arg = bufs[i].first;
      const bool is_act = arg == DNNL_ARG_SRC || arg == DNNL_ARG_DST || arg == DNNL_ARG_DIFF_SRC ||
                          arg == DNNL_ARG_DIFF_DST;
      args.emplace(arg, memory(is_act ? act : vec, Engine(), bufs[i].second));
    }
    e.prim.execute(Stream(), args);
    Stream().wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_bn: oneDNN error: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("onednn_bn: out of memory for the workspace");
  }
  return ffi::Error::Success();
}

bool SameC(int64_t c, std::initializer_list<ffi::AnyBuffer::Dimensions> vs) {  // all (c,)
  for (const auto& d : vs)
    if (d.size() != 1 || d[0] != c) return false;
  return true;
}

bool SameDims(const ffi::AnyBuffer::Dimensions& a, const ffi::AnyBuffer::Dimensions& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

ffi::Error BnFwd(F32 x, F32 scale, F32 shift, F32Out y, F32Out mean, F32Out var, float eps) {
  const auto& xd = x.dimensions();
  if (xd.size() != 4 || !SameDims(xd, y->dimensions()) ||
      !SameC(xd[3], {scale.dimensions(), shift.dimensions(), mean->dimensions(), var->dimensions()}))
    return ffi::Error::InvalidArgument("onednn_bn: x, y (N,H,W,C) and scale, shift, mean, var (C,) expected");
  return RunBn(kBnFwd, xd, eps,
               {{{DNNL_ARG_SRC, x.typed_data()},
                 {DNNL_ARG_SCALE, scale.typed_data()},
                 {DNNL_ARG_SHIFT, shift.typed_data()},
                 {DNNL_ARG_DST, y->typed_data()},
                 {DNNL_ARG_MEAN, mean->typed_data()},
                 {DNNL_ARG_VARIANCE, var->typed_data()}}},
               6);
}

ffi::Error BnBwd(F32 x, F32 dy, F32 scale, F32 mean, F32 var, F32Out dx, F32Out dscale, F32Out dshift, float eps) {
  const auto& xd = x.dimensions();
  if (xd.size() != 4 || !SameDims(xd, dy.dimensions()) || !SameDims(xd, dx->dimensions()) ||
      !SameC(xd[3], {scale.dimensions(), mean.dimensions(), var.dimensions(), dscale->dimensions(),
                     dshift->dimensions()}))
    return ffi::Error::InvalidArgument(
        "onednn_bn: x, dy, dx (N,H,W,C) and scale, mean, var, dscale, dshift (C,) expected");
  return RunBn(kBnBwd, xd, eps,
               {{{DNNL_ARG_SRC, x.typed_data()},
                 {DNNL_ARG_DIFF_DST, dy.typed_data()},
                 {DNNL_ARG_SCALE, scale.typed_data()},
                 {DNNL_ARG_MEAN, mean.typed_data()},
                 {DNNL_ARG_VARIANCE, var.typed_data()},
                 {DNNL_ARG_DIFF_SRC, dx->typed_data()},
                 {DNNL_ARG_DIFF_SCALE, dscale->typed_data()},
                 {DNNL_ARG_DIFF_SHIFT, dshift->typed_data()}}},
               8);
}

}  // namespace

#define VAE_CONV_ATTRS                                                                            \
  .Attr<int64_t>("stride").Attr<int64_t>("pad_lh").Attr<int64_t>("pad_hh").Attr<int64_t>("pad_lw") \
      .Attr<int64_t>("pad_hw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeOnednnConvFwd, ConvFwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() VAE_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeOnednnConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() VAE_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeOnednnConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() VAE_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeOnednnBnFwd, BnFwd,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("eps"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeOnednnBnBwd, BnBwd,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("eps"));

// oneDNN's version and threads, for the Python side's diagnostics.
extern "C" int VaeOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return static_cast<int>(v->major * 10000 + v->minor * 100 + v->patch);
}
