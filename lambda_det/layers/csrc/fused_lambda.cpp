// The lambda layer's output on the CPU, fused: y_n = (lambda^c + lambda^p_n)^T q_n for every query
// position n, without ever materializing the k x v position lambdas of every position.
//
// LambdaNetworks (Bello 2021), Sec. 3: lambda^p_n = sum_m E_{n,m}^T v_m, E_{n,m} = R[pos(m) - pos(n)].
// Applying it to the queries and swapping the sums gives the same numbers in the order of the
// "relative logits":
//
//     a[h, u, n, t] = sum_k q[h, k, n] R[k, u, t]                 (logits, t = offset inside the scope)
//     y[h, v, n]    = sum_{u, t} a[h, u, n, t] V[u, v, n + t]     (taps inside the map only: zero padding)
//
// which costs h (k + v) multiply-adds per tap where the lambda form costs k v (3.2x fewer at the
// paper's h = 4, k = 16, v = 64). The content term (lambda^c)^T q_n starts each position's sum, so the
// output is written once. The backward pass:
//
//     da[h, u, n, t] = sum_v g[h, v, n] V[u, v, n + t]
//     dq[h, k, n]    = sum_{u, t} da[h, u, n, t] R[k, u, t]
//     dR[k, u, t]    = sum_{b, n, h} da[h, u, n, t] q[h, k, n]
//     dV[u, v, n+t] += sum_h a[h, u, n, t] g[h, v, n]
//     dq[h, k, n]   += sum_v g[h, v, n] lambda^c[k, v];   dlambda^c[k, v] = sum_{n, h} q[h, k, n] g[h, v, n]
//
// Work goes one row of query positions at a time (in parallel over rows), and inside a row one
// scope row dy at a time, so that the rows of V a step reads stay in L1 while every position of
// the query row uses them. Loops are written for the compiler's vectorizer (GCC vector extensions,
// 64-byte vectors): v is the vector dimension where sums run over taps, the x-taps where sums run
// over v, k where sums run over taps into dq / dR.
//
// Layouts (all contiguous):
//   q_cl   (B, H, W, h, k)            queries, channels last
//   v_cl   (B, U, H, W, VP)           values, channels last, v padded to VP (a multiple of the vector length)
//   v_px   (B, U, v, CS)              values, each channel H rows of WP (cw zeros on the left, zeros on the
//                                     right), channels CS apart: an odd multiple of 64 bytes, so that the
//                                     v rows a step reads do not all fall into one L1 cache set
//   r_a    (U, RH, k, RWP)            embeddings for the logits, x-taps padded to RWP
//   r_k    (U, RH, RW, KP)            embeddings for dq / dR, k padded to KP
//   c_v    (B, k, VP)                 the content lambda, v as the vector (forward, dlambda^c)
//   c_k    (B, VP, KP)                the content lambda, k as the vector (dq)
//   out    (B, h v, H, W)             the layer's output before its pooling (NCHW, as the network's
//                                     other layers; each row is assembled channels-last in a buffer)
//   g      (B, h v, H, W)             its gradient (NCHW)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

template <typename T> struct V64;
template <> struct V64<float> { typedef float type __attribute__((vector_size(64))); static constexpr int L = 16; };
template <> struct V64<double> { typedef double type __attribute__((vector_size(64))); static constexpr int L = 8; };

template <typename T> using vec_t = typename V64<T>::type;

template <typename T> inline vec_t<T> load(const T* p) { vec_t<T> r; std::memcpy(&r, p, sizeof(r)); return r; }
template <typename T> inline void store(T* p, const vec_t<T>& v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T> inline vec_t<T> zero() { return vec_t<T>{}; }

struct Shape {
  int64_t B, h, k, H, W, U, v, RH, RW, VP, RWP, KP, WP, CS;
  int64_t ch() const { return RH / 2; }
  int64_t cw() const { return RW / 2; }
  int64_t astride() const { return U * RH * RWP; }  // one head's logits of one position
  int64_t apos() const { return h * astride(); }     // all logits of one position
};

// The query row being worked on: which scope rows and, per position, which x-taps fall inside the map.
struct Row {
  int64_t b, y;
  int dy0, dy1;
  Row(const Shape& s, int64_t by) : b(by / s.H), y(by % s.H) {
    dy0 = static_cast<int>(std::max<int64_t>(0, s.ch() - y));
    dy1 = static_cast<int>(std::min<int64_t>(s.RH, s.H + s.ch() - y));
  }
  static int dx0(const Shape& s, int64_t x) { return static_cast<int>(std::max<int64_t>(0, s.cw() - x)); }
  static int dx1(const Shape& s, int64_t x) { return static_cast<int>(std::min<int64_t>(s.RW, s.W + s.cw() - x)); }
};

// ----------------------------------------------------------------------------------------------
// logits and their gradients: x-taps are the vector, 8 independent accumulators
// ----------------------------------------------------------------------------------------------
// Calls block(HN, CN, hb, cb) over tiles of HN heads x CN vector chunks (HN, CN as compile-time
// constants, so every block's accumulators stay in registers): 4 x 2 where they fit, else smaller.
template <typename Block>
inline void for_each_tile(int64_t heads, int chunks, Block&& block) {
  using one = std::integral_constant<int, 1>;
  using two = std::integral_constant<int, 2>;
  using four = std::integral_constant<int, 4>;
  for (int64_t hb = 0; hb < heads;) {
    const bool h4 = heads - hb >= 4;
    for (int cb = 0; cb < chunks;) {
      const bool c2 = chunks - cb >= 2;
      if (h4 && c2) block(four{}, two{}, hb, cb);
      else if (h4) block(four{}, one{}, hb, cb);
      else if (c2) block(one{}, two{}, hb, cb);
      else block(one{}, one{}, hb, cb);
      cb += c2 ? 2 : 1;
    }
    hb += h4 ? 4 : 1;
  }
}

template <typename T, int HN, int CN>
inline void logits_block(const Shape& s, const T* q, const T* r_a, int dy0, int dy1, int64_t hb, int cb, T* a) {
  constexpr int L = V64<T>::L;
  for (int64_t u = 0; u < s.U; ++u) {
    for (int dy = dy0; dy < dy1; ++dy) {
      const T* r = r_a + (u * s.RH + dy) * s.k * s.RWP + cb * L;
      vec_t<T> acc[HN][CN];
      for (int i = 0; i < HN; ++i)
        for (int c = 0; c < CN; ++c) acc[i][c] = zero<T>();
      for (int64_t kk = 0; kk < s.k; ++kk) {
        vec_t<T> rv[CN];
        for (int c = 0; c < CN; ++c) rv[c] = load<T>(r + kk * s.RWP + c * L);
        for (int i = 0; i < HN; ++i) {
          const T qv = q[(hb + i) * s.k + kk];
          for (int c = 0; c < CN; ++c) acc[i][c] += qv * rv[c];
        }
      }
      for (int i = 0; i < HN; ++i)
        for (int c = 0; c < CN; ++c)
          store<T>(a + (hb + i) * s.astride() + (u * s.RH + dy) * s.RWP + (cb + c) * L, acc[i][c]);
    }
  }
}

// a[hh][u][dy][0..RWP) of one position, rows dy in [dy0, dy1)
template <typename T>
void logits(const Shape& s, const T* q, const T* r_a, int dy0, int dy1, T* a) {
  for_each_tile(s.h, static_cast<int>(s.RWP / V64<T>::L), [&](auto hn, auto cn, int64_t hb, int cb) {
    logits_block<T, decltype(hn)::value, decltype(cn)::value>(s, q, r_a, dy0, dy1, hb, cb, a);
  });
}

// da[hh][u][dy][.] of one position for one scope row: sum_v g[hh][v] V[u, v, y + dy - ch, x - cw + dx]
template <typename T, int HN, int CN>
inline void logit_grads_block(const Shape& s, const T* g, const T* vrows, int64_t x, int64_t u, int dy, int64_t hb,
                              int cb, T* da) {
  constexpr int L = V64<T>::L;
  // vrows: row y + dy - ch of every value channel, CS apart; column x - cw + dx is at x + dx
  const T* base = vrows + x + cb * L;
  const int64_t vstride = s.CS;
  vec_t<T> acc[HN][CN];
  for (int i = 0; i < HN; ++i)
    for (int c = 0; c < CN; ++c) acc[i][c] = zero<T>();
  for (int64_t vv = 0; vv < s.v; ++vv) {
    vec_t<T> rv[CN];
    for (int c = 0; c < CN; ++c) rv[c] = load<T>(base + vv * vstride + c * L);
    for (int i = 0; i < HN; ++i) {
      const T gv = g[(hb + i) * s.VP + vv];
      for (int c = 0; c < CN; ++c) acc[i][c] += gv * rv[c];
    }
  }
  for (int i = 0; i < HN; ++i)
    for (int c = 0; c < CN; ++c) store<T>(da + (hb + i) * s.astride() + (u * s.RH + dy) * s.RWP + (cb + c) * L, acc[i][c]);
}

template <typename T>
void logit_grads(const Shape& s, const T* g, const T* vrows, int64_t x, int64_t u, int dy, T* da) {
  for_each_tile(s.h, static_cast<int>(s.RWP / V64<T>::L), [&](auto hn, auto cn, int64_t hb, int cb) {
    logit_grads_block<T, decltype(hn)::value, decltype(cn)::value>(s, g, vrows, x, u, dy, hb, cb, da);
  });
}

// da of positions x and x + 1 together (4 heads, all RWP x-taps in 2 vectors): the value rows they
// read overlap but for one column, so one load serves both; position x + 1's tap dx is column dx + 1.
// Needs RWP == 2 L and RW < RWP; da rows of x + 1 are written from one lane before their start
// (the previous row's last lane, padding) and their last lane is left as it was (padding too).
template <typename T>
inline void logit_grads_pair(const Shape& s, const T* g0, const T* g1, const T* vrows, int64_t x, int64_t u, int dy,
                             int64_t hb, T* da0, T* da1) {
  constexpr int L = V64<T>::L;
  const T* base = vrows + x;
  const int64_t vstride = s.CS;
  vec_t<T> acc0[4][2], acc1[4][2];
  for (int i = 0; i < 4; ++i)
    for (int c = 0; c < 2; ++c) { acc0[i][c] = zero<T>(); acc1[i][c] = zero<T>(); }
  for (int64_t vv = 0; vv < s.v; ++vv) {
    const vec_t<T> r0 = load<T>(base + vv * vstride), r1 = load<T>(base + vv * vstride + L);
    for (int i = 0; i < 4; ++i) {
      const T a = g0[(hb + i) * s.VP + vv], b = g1[(hb + i) * s.VP + vv];
      acc0[i][0] += a * r0;
      acc0[i][1] += a * r1;
      acc1[i][0] += b * r0;
      acc1[i][1] += b * r1;
    }
  }
  const int64_t off = (u * s.RH + dy) * s.RWP;
  for (int i = 0; i < 4; ++i) {
    T* d0 = da0 + (hb + i) * s.astride() + off;
    T* d1 = da1 + (hb + i) * s.astride() + off - 1;
    store<T>(d0, acc0[i][0]);
    store<T>(d0 + L, acc0[i][1]);
    store<T>(d1, acc1[i][0]);
    store<T>(d1 + L, acc1[i][1]);
  }
}

// ----------------------------------------------------------------------------------------------
// sums over the x-taps of one scope row: v (or k) is the vector
// ----------------------------------------------------------------------------------------------
// out[hb..hb+HN)[vb..vb+NV*L) += sum_dx a[hh][dx] V[x - cw + dx][vb..]
template <typename T, int HN, int NV>
inline void aggregate(const Shape& s, const T* a, const T* window, int dx0, int dx1, int64_t hb, int64_t vb, T* out) {
  constexpr int L = V64<T>::L;
  vec_t<T> acc[HN][NV];
  for (int i = 0; i < HN; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = load<T>(out + (hb + i) * s.VP + vb + j * L);
  for (int dx = dx0; dx < dx1; ++dx) {
    const T* vr = window + dx * s.VP + vb;
    vec_t<T> vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = load<T>(vr + j * L);
    for (int i = 0; i < HN; ++i) {
      const T w = a[(hb + i) * s.astride() + dx];
      for (int j = 0; j < NV; ++j) acc[i][j] += w * vv[j];
    }
  }
  for (int i = 0; i < HN; ++i)
    for (int j = 0; j < NV; ++j) store<T>(out + (hb + i) * s.VP + vb + j * L, acc[i][j]);
}

// out[hb..hb+HN)[vb..vb+NV*L) = sum_k q[hh][k] lambda^c[k][vb..]: the content term starts the sum
template <typename T, int HN, int NV>
inline void content_start(const Shape& s, const T* q, const T* c_v, int64_t hb, int64_t vb, T* out) {
  constexpr int L = V64<T>::L;
  vec_t<T> acc[HN][NV];
  for (int i = 0; i < HN; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = zero<T>();
  for (int64_t kk = 0; kk < s.k; ++kk) {
    vec_t<T> cv[NV];
    for (int j = 0; j < NV; ++j) cv[j] = load<T>(c_v + kk * s.VP + vb + j * L);
    for (int i = 0; i < HN; ++i) {
      const T qv = q[(hb + i) * s.k + kk];
      for (int j = 0; j < NV; ++j) acc[i][j] += qv * cv[j];
    }
  }
  for (int i = 0; i < HN; ++i)
    for (int j = 0; j < NV; ++j) store<T>(out + (hb + i) * s.VP + vb + j * L, acc[i][j]);
}

template <typename T>
void content_start_all(const Shape& s, const T* q, const T* c_v, T* out) {
  constexpr int L = V64<T>::L;
  for (int64_t hb = 0; hb < s.h;) {
    const int64_t hn = s.h - hb >= 4 ? 4 : 1;
    for (int64_t vb = 0; vb < s.VP; vb += L) {
      if (hn == 4) content_start<T, 4, 1>(s, q, c_v, hb, vb, out);
      else content_start<T, 1, 1>(s, q, c_v, hb, vb, out);
    }
    hb += hn;
  }
}

// dq[hh][kb..] += sum_v g[hh][v] lambda^c[v][kb..];  dlambda^c[k][vb..] += sum_hh q[hh][k] g[hh][vb..]
template <typename T>
void content_grads(const Shape& s, const T* q, const T* g, const T* c_k, T* dq, T* dc_v) {
  constexpr int L = V64<T>::L;
  for (int64_t hh = 0; hh < s.h; ++hh)
    for (int64_t kb = 0; kb < s.KP; kb += L) {
      vec_t<T> acc = load<T>(dq + hh * s.KP + kb);
      for (int64_t vv = 0; vv < s.v; ++vv) acc += g[hh * s.VP + vv] * load<T>(c_k + vv * s.KP + kb);
      store<T>(dq + hh * s.KP + kb, acc);
    }
  for (int64_t kk = 0; kk < s.k; ++kk)
    for (int64_t vb = 0; vb < s.VP; vb += L) {
      vec_t<T> acc = load<T>(dc_v + kk * s.VP + vb);
      for (int64_t hh = 0; hh < s.h; ++hh) acc += q[hh * s.k + kk] * load<T>(g + hh * s.VP + vb);
      store<T>(dc_v + kk * s.VP + vb, acc);
    }
}

template <typename T, int HN>
inline void aggregate_all_v(const Shape& s, const T* a, const T* window, int dx0, int dx1, int64_t hb, T* out) {
  constexpr int L = V64<T>::L;
  int64_t vb = 0;
  for (; vb + 4 * L <= s.VP; vb += 4 * L) aggregate<T, HN, 4>(s, a, window, dx0, dx1, hb, vb, out);
  for (; vb + 2 * L <= s.VP; vb += 2 * L) aggregate<T, HN, 2>(s, a, window, dx0, dx1, hb, vb, out);
  for (; vb < s.VP; vb += L) aggregate<T, HN, 1>(s, a, window, dx0, dx1, hb, vb, out);
}

// dq[hb..hb+HN)[kb..] += sum_dx da[hh][dx] R[dx][kb..];  dR[dx][kb..] += sum_hh da[hh][dx] q[hh][kb..]
template <typename T, int HN>
inline void query_and_embedding_grads(const Shape& s, const T* q, const T* da, const T* r_k_row, int dx0, int dx1,
                                      int64_t hb, int64_t kb, T* dq, T* dr_row) {
  constexpr int L = V64<T>::L;
  const int kn = static_cast<int>(std::min<int64_t>(L, s.k - kb));
  vec_t<T> qv[HN], dqv[HN];
  for (int i = 0; i < HN; ++i) {
    T tmp[L] = {};
    for (int j = 0; j < kn; ++j) tmp[j] = q[(hb + i) * s.k + kb + j];
    qv[i] = load<T>(tmp);
    dqv[i] = load<T>(dq + (hb + i) * s.KP + kb);
  }
  for (int dx = dx0; dx < dx1; ++dx) {
    const vec_t<T> rk = load<T>(r_k_row + dx * s.KP + kb);
    T* drp = dr_row + dx * s.KP + kb;
    vec_t<T> drv = load<T>(drp);
    for (int i = 0; i < HN; ++i) {
      const T d = da[(hb + i) * s.astride() + dx];
      dqv[i] += d * rk;
      drv += d * qv[i];
    }
    store<T>(drp, drv);
  }
  for (int i = 0; i < HN; ++i) store<T>(dq + (hb + i) * s.KP + kb, dqv[i]);
}

// dV[x - cw + dx][vb..] += sum_hh a[hh][dx] g[hh][vb..]
template <typename T, int HN, int NV>
inline void value_grads(const Shape& s, const T* a, const T* g, T* window, int dx0, int dx1, int64_t hb, int64_t vb) {
  constexpr int L = V64<T>::L;
  vec_t<T> gv[HN][NV];
  for (int i = 0; i < HN; ++i)
    for (int j = 0; j < NV; ++j) gv[i][j] = load<T>(g + (hb + i) * s.VP + vb + j * L);
  for (int dx = dx0; dx < dx1; ++dx) {
    T* p = window + dx * s.VP + vb;
    vec_t<T> acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = load<T>(p + j * L);
    for (int i = 0; i < HN; ++i) {
      const T w = a[(hb + i) * s.astride() + dx];
      for (int j = 0; j < NV; ++j) acc[j] += w * gv[i][j];
    }
    for (int j = 0; j < NV; ++j) store<T>(p + j * L, acc[j]);
  }
}

template <typename T, int HN>
inline void value_grads_all_v(const Shape& s, const T* a, const T* g, T* window, int dx0, int dx1, int64_t hb) {
  constexpr int L = V64<T>::L;
  int64_t vb = 0;
  for (; vb + 4 * L <= s.VP; vb += 4 * L) value_grads<T, HN, 4>(s, a, g, window, dx0, dx1, hb, vb);
  for (; vb < s.VP; vb += L) value_grads<T, HN, 1>(s, a, g, window, dx0, dx1, hb, vb);
}

// ----------------------------------------------------------------------------------------------
// between one query row in NCHW (channels h v, H rows of W) and a channels-last row buffer (W, h, VP)
// ----------------------------------------------------------------------------------------------
template <typename T>
void row_to_nchw(const Shape& s, const T* buf, int64_t b, int64_t y, T* out) {
  for (int64_t hh = 0; hh < s.h; ++hh)
    for (int64_t vv = 0; vv < s.v; ++vv) {
      T* dst = out + ((b * s.h + hh) * s.v + vv) * s.H * s.W + y * s.W;
      const T* src = buf + hh * s.VP + vv;
      for (int64_t x = 0; x < s.W; ++x) dst[x] = src[x * s.h * s.VP];
    }
}

template <typename T>
void row_from_nchw(const Shape& s, const T* g, int64_t b, int64_t y, T* buf) {
  std::fill(buf, buf + s.W * s.h * s.VP, T(0));
  for (int64_t hh = 0; hh < s.h; ++hh)
    for (int64_t vv = 0; vv < s.v; ++vv) {
      const T* src = g + ((b * s.h + hh) * s.v + vv) * s.H * s.W + y * s.W;
      T* dst = buf + hh * s.VP + vv;
      for (int64_t x = 0; x < s.W; ++x) dst[x * s.h * s.VP] = src[x];
    }
}

// ----------------------------------------------------------------------------------------------
// forward and backward, one query row at a time
// ----------------------------------------------------------------------------------------------
template <typename T>
void forward_impl(const Shape& s, const T* q_cl, const T* v_cl, const T* r_a, const T* c_v, T* out) {
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a(static_cast<size_t>(s.W * s.apos())), row_buffer(static_cast<size_t>(s.W * s.h * s.VP));
    for (int64_t by = begin; by < end; ++by) {
      const Row row(s, by);
      T* out_row = row_buffer.data();
      for (int64_t x = 0; x < s.W; ++x) {
        const T* q = q_cl + (by * s.W + x) * s.h * s.k;
        content_start_all<T>(s, q, c_v + row.b * s.k * s.VP, out_row + x * s.h * s.VP);
        logits<T>(s, q, r_a, row.dy0, row.dy1, a.data() + x * s.apos());
      }
      for (int64_t u = 0; u < s.U; ++u) {
        for (int dy = row.dy0; dy < row.dy1; ++dy) {
          const T* vrow = v_cl + ((row.b * s.U + u) * s.H + (row.y + dy - s.ch())) * s.W * s.VP;
          for (int64_t x = 0; x < s.W; ++x) {
            const T* ax = a.data() + x * s.apos() + (u * s.RH + dy) * s.RWP;
            const T* window = vrow + (x - s.cw()) * s.VP;
            T* o = out_row + x * s.h * s.VP;
            const int dx0 = Row::dx0(s, x), dx1 = Row::dx1(s, x);
            int64_t hb = 0;
            for (; hb + 4 <= s.h; hb += 4) aggregate_all_v<T, 4>(s, ax, window, dx0, dx1, hb, o);
            for (; hb < s.h; ++hb) aggregate_all_v<T, 1>(s, ax, window, dx0, dx1, hb, o);
          }
        }
      }
      row_to_nchw<T>(s, out_row, row.b, row.y, out);
    }
  });
}

template <typename T>
void backward_impl(const Shape& s, const T* g_nchw, const T* q_cl, const T* v_px, const T* r_a, const T* r_k, const T* c_k,
                   T* dq_cl, T* dv_cl, T* dr, T* dc) {
  constexpr int L = V64<T>::L;
  const int threads = at::get_num_threads();
  const int64_t dv_size = s.B * s.U * s.H * s.W * s.VP, dr_size = s.U * s.RH * s.RW * s.KP;
  // every thread scatters into its own dV and dR, summed at the end
  const int64_t dc_size = s.B * s.k * s.VP;
  std::vector<std::vector<T>> dv_local(threads), dr_local(threads), dc_local(threads);
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    std::vector<T>& dvt = dv_local[tid];
    std::vector<T>& drt = dr_local[tid];
    if (dvt.empty()) dvt.assign(static_cast<size_t>(dv_size), T(0));
    if (drt.empty()) drt.assign(static_cast<size_t>(dr_size), T(0));
    std::vector<T>& dct = dc_local[tid];
    if (dct.empty()) dct.assign(static_cast<size_t>(dc_size), T(0));
    std::vector<T> a(static_cast<size_t>(s.W * s.apos())), dq(static_cast<size_t>(s.W * s.h * s.KP));
    std::vector<T> da_store(a.size() + 1);  // one lane before the first row: logit_grads_pair writes there
    std::vector<T> g_buffer(static_cast<size_t>(s.W * s.h * s.VP));
    T* const da_begin = da_store.data() + 1;
    for (int64_t by = begin; by < end; ++by) {
      const Row row(s, by);
      row_from_nchw<T>(s, g_nchw, row.b, row.y, g_buffer.data());
      const T* g_row = g_buffer.data();
      for (int64_t x = 0; x < s.W; ++x)
        logits<T>(s, q_cl + (by * s.W + x) * s.h * s.k, r_a, row.dy0, row.dy1, a.data() + x * s.apos());
      std::fill(dq.begin(), dq.end(), T(0));
      for (int64_t x = 0; x < s.W; ++x)
        content_grads<T>(s, q_cl + (by * s.W + x) * s.h * s.k, g_row + x * s.h * s.VP, c_k + row.b * s.VP * s.KP,
                         dq.data() + x * s.h * s.KP, dct.data() + row.b * s.k * s.VP);
      for (int64_t u = 0; u < s.U; ++u) {
        for (int dy = row.dy0; dy < row.dy1; ++dy) {
          const int64_t yy = row.y + dy - s.ch();
          const T* vrows = v_px + (row.b * s.U + u) * s.v * s.CS + yy * s.WP;
          T* dv_row = dvt.data() + ((row.b * s.U + u) * s.H + yy) * s.W * s.VP;
          const T* r_k_row = r_k + (u * s.RH + dy) * s.RW * s.KP;
          T* dr_row = drt.data() + (u * s.RH + dy) * s.RW * s.KP;
          // da in pairs of positions where the shapes allow it (the paper's r = 23 with k = 16 does)
          const bool pairs = s.RWP == 2 * L && s.RW < s.RWP && s.h % 4 == 0;
          for (int64_t x = 0; x < s.W; ++x) {
            const T* g = g_row + x * s.h * s.VP;
            const int64_t off = x * s.apos() + (u * s.RH + dy) * s.RWP;
            const int dx0 = Row::dx0(s, x), dx1 = Row::dx1(s, x);
            if (!pairs) {
              logit_grads<T>(s, g, vrows, x, u, dy, da_begin + x * s.apos());
            } else if (x % 2 == 0 && x + 1 < s.W) {
              for (int64_t hb = 0; hb < s.h; hb += 4)
                logit_grads_pair<T>(s, g, g + s.h * s.VP, vrows, x, u, dy, hb, da_begin + x * s.apos(),
                                    da_begin + (x + 1) * s.apos());
            } else if (x % 2 == 0) {  // the last position of an odd row
              logit_grads<T>(s, g, vrows, x, u, dy, da_begin + x * s.apos());
            }
            for (int64_t kb = 0; kb < s.KP; kb += L) {
              int64_t hb = 0;
              for (; hb + 4 <= s.h; hb += 4)
                query_and_embedding_grads<T, 4>(s, q_cl + (by * s.W + x) * s.h * s.k, da_begin + off, r_k_row, dx0, dx1,
                                                hb, kb, dq.data() + x * s.h * s.KP, dr_row);
              for (; hb < s.h; ++hb)
                query_and_embedding_grads<T, 1>(s, q_cl + (by * s.W + x) * s.h * s.k, da_begin + off, r_k_row, dx0, dx1,
                                                hb, kb, dq.data() + x * s.h * s.KP, dr_row);
            }
            T* window = dv_row + (x - s.cw()) * s.VP;
            int64_t hb = 0;
            for (; hb + 4 <= s.h; hb += 4) value_grads_all_v<T, 4>(s, a.data() + off, g, window, dx0, dx1, hb);
            for (; hb < s.h; ++hb) value_grads_all_v<T, 1>(s, a.data() + off, g, window, dx0, dx1, hb);
          }
        }
      }
      for (int64_t x = 0; x < s.W; ++x)
        for (int64_t hh = 0; hh < s.h; ++hh)
          std::copy_n(dq.data() + (x * s.h + hh) * s.KP, s.k, dq_cl + ((by * s.W + x) * s.h + hh) * s.k);
    }
  });
  at::parallel_for(0, dv_size, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = 0;
      for (const auto& part : dv_local)
        if (!part.empty()) sum += part[i];
      dv_cl[i] = sum;
    }
  });
  for (int64_t i = 0; i < dr_size; ++i) {
    T sum = 0;
    for (const auto& part : dr_local)
      if (!part.empty()) sum += part[i];
    dr[i] = sum;
  }
  for (int64_t i = 0; i < dc_size; ++i) {
    T sum = 0;
    for (const auto& part : dc_local)
      if (!part.empty()) sum += part[i];
    dc[i] = sum;
  }
}

Shape shape_of(const torch::Tensor& q_cl, const torch::Tensor& r_a, int64_t U, int64_t VP, int64_t v, int64_t rw) {
  Shape s;
  s.B = q_cl.size(0); s.H = q_cl.size(1); s.W = q_cl.size(2); s.h = q_cl.size(3); s.k = q_cl.size(4);
  s.U = U; s.VP = VP; s.v = v;
  s.RH = r_a.size(1); s.RWP = r_a.size(3); s.RW = rw;
  s.KP = 0; s.WP = 0; s.CS = 0;
  TORCH_CHECK(s.RH % 2 == 1 && s.RW % 2 == 1 && s.RW <= s.RWP && s.v <= s.VP && r_a.size(2) == s.k,
              "lambda_det fused lambda: inconsistent shapes");
  return s;
}

void check(const std::vector<torch::Tensor>& tensors) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "lambda_det fused lambda: CPU tensors only");
    TORCH_CHECK(t.is_contiguous(), "lambda_det fused lambda: contiguous tensors only");
    TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(), "lambda_det fused lambda: one dtype for all tensors");
  }
}

}  // namespace

torch::Tensor lambda_forward(torch::Tensor q_cl, torch::Tensor v_cl, torch::Tensor r_a, torch::Tensor c_v, int64_t v,
                             int64_t rw) {
  check({q_cl, v_cl, r_a, c_v});
  const Shape s = shape_of(q_cl, r_a, v_cl.size(1), v_cl.size(4), v, rw);
  TORCH_CHECK(v_cl.size(0) == s.B && v_cl.size(2) == s.H && v_cl.size(3) == s.W, "lambda_det fused lambda: values shape");
  TORCH_CHECK(c_v.size(0) == s.B && c_v.size(1) == s.k && c_v.size(2) == s.VP, "lambda_det fused lambda: content shape");
  auto out = torch::empty({s.B, s.h * s.v, s.H, s.W}, q_cl.options());
  AT_DISPATCH_FLOATING_TYPES(q_cl.scalar_type(), "lambda_forward", [&] {
    forward_impl<scalar_t>(s, q_cl.data_ptr<scalar_t>(), v_cl.data_ptr<scalar_t>(), r_a.data_ptr<scalar_t>(),
                           c_v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> lambda_backward(torch::Tensor g, torch::Tensor q_cl, torch::Tensor v_px, torch::Tensor r_a,
                                           torch::Tensor r_k, torch::Tensor c_k, int64_t wp) {
  check({g, q_cl, v_px, r_a, r_k, c_k});
  Shape s = shape_of(q_cl, r_a, v_px.size(1), c_k.size(1), v_px.size(2), r_k.size(2));
  s.KP = r_k.size(3);
  s.WP = wp;
  s.CS = v_px.size(3);
  TORCH_CHECK(s.WP >= s.W + s.RWP && s.CS >= s.H * s.WP && s.KP >= s.k, "lambda_det fused lambda: padded shapes");
  TORCH_CHECK(g.dim() == 4 && g.size(0) == s.B && g.size(1) == s.h * s.v && g.size(2) == s.H && g.size(3) == s.W,
              "lambda_det fused lambda: gradient shape");
  TORCH_CHECK(c_k.size(0) == s.B && c_k.size(1) == s.VP && c_k.size(2) == s.KP, "lambda_det fused lambda: content shape");
  auto dq = torch::empty_like(q_cl);
  auto dv = torch::empty({s.B, s.U, s.H, s.W, s.VP}, q_cl.options());
  auto dr = torch::empty({s.U, s.RH, s.RW, s.KP}, q_cl.options());
  auto dc = torch::empty({s.B, s.k, s.VP}, q_cl.options());
  AT_DISPATCH_FLOATING_TYPES(q_cl.scalar_type(), "lambda_backward", [&] {
    backward_impl<scalar_t>(s, g.data_ptr<scalar_t>(), q_cl.data_ptr<scalar_t>(), v_px.data_ptr<scalar_t>(),
                            r_a.data_ptr<scalar_t>(), r_k.data_ptr<scalar_t>(), c_k.data_ptr<scalar_t>(),
                            dq.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), dr.data_ptr<scalar_t>(),
                            dc.data_ptr<scalar_t>());
  });
  return {dq, dv, dr, dc};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lambda_forward, "fused lambda layer output (content + position terms), forward (CPU)");
  m.def("backward", &lambda_backward, "fused lambda layer output, backward (CPU)");
}
