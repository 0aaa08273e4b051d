// racecheck.cpp -- the simulator's race and memory checker (gpunet._C_simcheck),
// the counterpart of compute-sanitizer's racecheck and memcheck.
//
// The kernel files of _C_simcheck are compiled with -fsanitize=thread, which
// makes the compiler call __tsan_read4(addr), __tsan_write8(addr),
// __tsan_atomic32_fetch_add(...) ... at every load, store and atomic. This
// file defines those entry points itself (ThreadSanitizer's runtime is not
// linked): atomics are performed for real, and accesses that a CUDA thread of
// the running launch makes to shared memory or to a registered global
// allocation update a shadow record per 4-byte word:
//   * the last write and up to two reads since it, each with the thread
//     (block, thread), the block's barrier generation, the warp's count of
//     completed collectives, the bytes of the word touched and the code
//     address of the access;
//   * two accesses of different threads to the same bytes, at least one a
//     write and not both atomic, conflict unless ordered: same block and a
//     __syncthreads() between them, or same warp and a warp collective
//     (__shfl*_sync, __syncwarp, __ballot_sync, ...) whose mask holds both
//     lanes between them. Blocks are never ordered within a launch.
// Also reported: reads of shared memory not written by the block (the
// simulator's static __shared__ keeps the previous block's values, a GPU's
// holds garbage) and accesses just outside an allocation or past the launch's
// dynamic shared memory. Reports name the kernel, both accesses' file:line
// (addr2line on this module's debug info), both threads and the address; the
// first ones become the launch error, so the Python caller gets RuntimeError.
// Launches run blocks on the calling OS thread (one worker), so the state is
// per OS thread and needs no locks.
#include <dlfcn.h>

#include <cinttypes>
#include <set>
#include <tuple>

namespace cudasim {
namespace racecheck {
namespace {

using detail::cur;
using detail::cur_blk;

struct Access {
  const void* pc = nullptr;
  uint32_t block = 0, tid = 0, bar = 0, wgen = 0;
  uint8_t bytes = 0;  // which bytes of the word; 0 = no access recorded
  bool atomic = false;
};

struct Word {
  Access write, reads[2];
  uint8_t written = 0;  // bytes written by this block (shared) / launch (global)
};

enum Space { kGlobal, kShared };

struct Region {
  uintptr_t lo = 0, hi = 0;
  Space space = kGlobal;
  std::vector<Word> words;  // sized on first access
};

constexpr uintptr_t kRedZone = 256;  // bytes around an allocation where an access is out of bounds
constexpr size_t kMaxReports = 8;

struct Launch {
  bool active = false;
  std::string kname;
  dim3 grid, block;
  std::vector<Region> global;       // registered allocations, sorted by lo
  Region dyn;                       // dynamic shared memory of the running block
  uintptr_t arena_hi = 0;           // end of the simulator's arena behind it
  std::vector<Region> statics;      // static __shared__ variables seen in the running block
  std::vector<std::vector<unsigned>> warp_masks;  // per warp: lanes of each completed collective
  uint32_t block_id = 0;
  std::vector<std::string> reports;
  std::set<std::tuple<int, const void*, const void*>> seen;
  size_t hazards = 0;
};

thread_local Launch L;

// ---------------------------------------------------------------- reporting
std::string location(const void* pc) {
  Dl_info info{};
  if (pc == nullptr || dladdr(pc, &info) == 0 || info.dli_fname == nullptr) return "?";
  const uintptr_t off = (uintptr_t)pc - (uintptr_t)info.dli_fbase - 1;  // the call, not the return address
  char cmd[1200];
  std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%" PRIxPTR " 2>/dev/null", info.dli_fname, off);
  std::string line;
  if (FILE* p = popen(cmd, "r")) {
    char buf[1024];
    if (std::fgets(buf, sizeof buf, p)) line = buf;  // the innermost frame of an inlined call comes first
    pclose(p);
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  if (line.empty() || line[0] == '?') {
    char b[64];
    std::snprintf(b, sizeof b, "+0x%" PRIxPTR, off);
    return std::string(info.dli_fname) + b;
  }
  const size_t csrc = line.rfind("csrc/");  // the project-relative path
  return csrc == std::string::npos ? line : line.substr(csrc);
}

// Whether the code at `pc` is kernel source (csrc/kernels, csrc/common) rather
// than the simulator's own, whose heap data may lie next to an allocation.
bool kernel_code(const void* pc) {
  static thread_local std::unordered_map<const void*, bool> known;
  auto it = known.find(pc);
  if (it != known.end()) return it->second;
  const std::string at = location(pc);
  return known[pc] = at.rfind("csrc/kernels/", 0) == 0 || at.rfind("csrc/common/", 0) == 0;
}

std::string who(uint32_t block, uint32_t tid) {
  const dim3 g = L.grid, b = L.block;
  char s[96];
  std::snprintf(s, sizeof s, "block (%u,%u,%u) thread (%u,%u,%u)", block % g.x, (block / g.x) % g.y,
                block / (g.x * g.y), tid % b.x, (tid / b.x) % b.y, tid / (b.x * b.y));
  return s;
}

void report(int kind, const Access& now, const Access* before, Space space, uintptr_t addr) {
  ++L.hazards;
  if (!L.seen.emplace(kind, now.pc, before ? before->pc : nullptr).second) return;
  if (L.reports.size() >= kMaxReports) return;
  static const char* kKinds[] = {"read-after-write race", "write-after-read race", "write-after-write race",
                                 "read of uninitialized shared memory", "out-of-bounds access"};
  const char* where = space == kShared ? "shared" : "global";
  char addr_s[32];
  std::snprintf(addr_s, sizeof addr_s, "0x%" PRIxPTR, addr);
  std::string r = std::string(kKinds[kind]) + " on " + where + " memory at " + addr_s + ": " +
                  who(now.block, now.tid) + " at " + location(now.pc);
  if (before)
    r += ", after " + who(before->block, before->tid) + " at " + location(before->pc) +
         (before->block == now.block ? " with no __syncthreads() or warp synchronisation between them"
                                     : " (blocks are not ordered within a launch)");
  L.reports.push_back(r);
}

// ---------------------------------------------------------------- ordering
bool ordered(const Access& a, const Access& b) {
  if (a.block != b.block) return false;
  if (a.tid == b.tid || a.bar != b.bar) return true;  // same thread, or a __syncthreads() between
  if (a.tid / 32 != b.tid / 32) return false;
  const unsigned both = (1u << (a.tid % 32)) | (1u << (b.tid % 32));
  const auto& masks = L.warp_masks[a.tid / 32];
  for (uint32_t g = a.wgen; g < b.wgen && g < masks.size(); ++g)
    if ((masks[g] & both) == both) return true;
  return false;
}

bool conflict(const Access& a, const Access& b) {
  return a.bytes != 0 && (a.bytes & b.bytes) != 0 && !(a.atomic && b.atomic) && !ordered(a, b);
}

void touch(Region& r, uintptr_t addr, size_t size, bool write, bool atomic, const void* pc) {
  if (profile::enabled()) profile::access(r.space == kShared, addr, size, write, pc, cur->linear);
  if (r.words.empty()) r.words.resize((r.hi - r.lo + 3) / 4);
  Access now;
  now.pc = pc;
  now.block = L.block_id;
  now.tid = cur->linear;
  now.bar = cur_blk->bar_gen;
  now.wgen = cur_blk->warps[cur->warp].gen;
  now.atomic = atomic;
  const uintptr_t end = std::min(addr + size, r.hi);
  for (uintptr_t a = addr; a < end;) {
    const uintptr_t word = (a - r.lo) / 4, word_end = std::min(end, r.lo + word * 4 + 4);
    now.bytes = (uint8_t)(((1u << (word_end - a)) - 1) << ((a - r.lo) % 4));
    Word& w = r.words[word];
    if (write) {
      if (conflict(w.write, now)) report(2, now, &w.write, r.space, a);
      for (const Access& rd : w.reads)
        if (conflict(rd, now)) report(1, now, &rd, r.space, a);
      w.write = now;
      w.reads[0] = w.reads[1] = Access{};
      w.written |= now.bytes;
    } else {
      if (r.space == kShared && (now.bytes & ~w.written)) report(3, now, nullptr, r.space, a);
      if (conflict(w.write, now)) report(0, now, &w.write, r.space, a);
      for (Access& rd : w.reads) {
        if (rd.bytes == 0 || (rd.block == now.block && rd.tid == now.tid) || ordered(rd, now)) {
          rd = now;  // else both slots hold unordered readers of other threads: keep them
          break;
        }
      }
    }
    a = word_end;
  }
}

Region* find_global(uintptr_t a) {
  auto it = std::upper_bound(L.global.begin(), L.global.end(), a,
                             [](uintptr_t x, const Region& r) { return x < r.lo; });
  if (it == L.global.begin()) return nullptr;
  --it;
  return a < it->hi ? &*it : nullptr;
}

// What threadIdx, blockIdx and friends read from kernel code: the running
// block's thread records and the runtime's thread-local pointers (heap data
// that may lie next to an allocation).
bool runtime_data(uintptr_t a) {
  const auto within = [a](const void* p, size_t n) { return a >= (uintptr_t)p && a < (uintptr_t)p + n; };
  return within(cur_blk->fibers, cur_blk->nthreads * sizeof(detail::Fiber)) ||
         within(cur_blk->warps, cur_blk->nwarps * sizeof(detail::WarpSync)) || within(&cur, sizeof cur) ||
         within(&cur_blk, sizeof cur_blk);
}

bool near_global(uintptr_t a) {
  for (const Region& r : L.global)
    if ((a >= r.hi && a < r.hi + kRedZone) || (a < r.lo && a + kRedZone >= r.lo)) return true;
  return false;
}

void access(const void* p, size_t size, bool write, bool atomic, const void* pc) {
  if (!L.active || cur == nullptr || cur_blk == nullptr) return;
  const uintptr_t a = (uintptr_t)p;
  if (a >= L.dyn.lo && a < L.arena_hi) {
    if (a + size <= L.dyn.hi) return touch(L.dyn, a, size, write, atomic, pc);
    Access now;
    now.pc = pc, now.block = L.block_id, now.tid = cur->linear;
    return report(4, now, nullptr, kShared, a);
  }
  for (Region& r : L.statics)
    if (a >= r.lo && a < r.hi) return touch(r, a, size, write, atomic, pc);
  if (Region* r = find_global(a)) {
    if (a + size <= r->hi) return touch(*r, a, size, write, atomic, pc);
  } else if (!near_global(a) || !kernel_code(pc) || runtime_data(a)) {
    return;  // the thread's own stack, the simulator's data: not device memory
  }
  Access now;
  now.pc = pc, now.block = L.block_id, now.tid = cur->linear;
  report(4, now, nullptr, kGlobal, a);
}

}  // namespace

// ---------------------------------------------------------------- hooks called by cudasim.h
void launch_begin(const char* kname, dim3 grid, dim3 block) {
  L = Launch{};
  L.active = true;
  L.kname = kname;
  L.grid = grid;
  L.block = block;
  for (const auto& [lo, n] : detail::registry().ranges()) {
    Region r;
    r.lo = lo, r.hi = lo + n, r.space = kGlobal;
    L.global.push_back(std::move(r));
  }
}

void block_begin(const detail::Block& b, void* arena, size_t arena_bytes) {
  L.block_id = b.bid.x + b.gdim.x * (b.bid.y + b.gdim.y * b.bid.z);
  L.dyn = Region{};
  L.dyn.lo = (uintptr_t)b.dyn_smem;
  L.dyn.hi = L.dyn.lo + b.dyn_smem_bytes;
  L.dyn.space = kShared;
  L.arena_hi = (uintptr_t)arena + arena_bytes;
  L.statics.clear();
  L.warp_masks.assign(b.nwarps ? b.nwarps : (b.nthreads + 31) / 32, {});
}

void warp_synced(unsigned warp, unsigned lanes) {
  if (L.active && warp < L.warp_masks.size()) L.warp_masks[warp].push_back(lanes);
}

void note_shared(const void* p, size_t bytes) {
  if (!L.active) return;
  const uintptr_t lo = (uintptr_t)p;
  for (const Region& r : L.statics)
    if (r.lo == lo) return;
  Region r;
  r.lo = lo, r.hi = lo + bytes, r.space = kShared;
  L.statics.push_back(std::move(r));
}

std::string launch_end() {
  std::string out;
  if (L.hazards) {
    out = std::to_string(L.hazards) + " hazard(s) found by the race checker";
    for (const std::string& r : L.reports) out += "\n  " + r;
    if (L.seen.size() > L.reports.size()) out += "\n  ...";
  }
  L = Launch{};
  return out;
}

}  // namespace racecheck
}  // namespace cudasim

// ---------------------------------------------------------------- the compiler's instrumentation entry points
using cudasim::racecheck::access;
#define CUDASIM_PC __builtin_return_address(0)

extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* a, unsigned long n) { access(a, n, false, false, CUDASIM_PC); }
void __tsan_write_range(void* a, unsigned long n) { access(a, n, true, false, CUDASIM_PC); }

#define CUDASIM_PLAIN(N)                                                                          \
  void __tsan_read##N(void* a) { access(a, N, false, false, CUDASIM_PC); }                       \
  void __tsan_write##N(void* a) { access(a, N, true, false, CUDASIM_PC); }                       \
  void __tsan_unaligned_read##N(void* a) { access(a, N, false, false, CUDASIM_PC); }             \
  void __tsan_unaligned_write##N(void* a) { access(a, N, true, false, CUDASIM_PC); }              \
  void __tsan_volatile_read##N(void* a) { access(a, N, false, false, CUDASIM_PC); }              \
  void __tsan_volatile_write##N(void* a) { access(a, N, true, false, CUDASIM_PC); }
CUDASIM_PLAIN(1)
CUDASIM_PLAIN(2)
CUDASIM_PLAIN(4)
CUDASIM_PLAIN(8)
CUDASIM_PLAIN(16)
#undef CUDASIM_PLAIN

// Atomics: performed here (the memory orders are the __ATOMIC_* values), and
// recorded as atomic accesses, which never race with each other.
#define CUDASIM_RMW(N, T, OP, BUILTIN)                                                            \
  T __tsan_atomic##N##_##OP(volatile T* a, T v, int mo) {                                         \
    access((void*)a, sizeof(T), true, true, CUDASIM_PC);                                          \
    return BUILTIN(a, v, mo);                                                                     \
  }
#define CUDASIM_ATOMICS(N, T)                                                                     \
  T __tsan_atomic##N##_load(const volatile T* a, int mo) {                                        \
    access((void*)a, sizeof(T), false, true, CUDASIM_PC);                                         \
    return __atomic_load_n(a, mo);                                                                \
  }                                                                                               \
  void __tsan_atomic##N##_store(volatile T* a, T v, int mo) {                                     \
    access((void*)a, sizeof(T), true, true, CUDASIM_PC);                                          \
    __atomic_store_n(a, v, mo);                                                                   \
  }                                                                                               \
  CUDASIM_RMW(N, T, exchange, __atomic_exchange_n)                                                \
  CUDASIM_RMW(N, T, fetch_add, __atomic_fetch_add)                                                \
  CUDASIM_RMW(N, T, fetch_sub, __atomic_fetch_sub)                                                \
  CUDASIM_RMW(N, T, fetch_and, __atomic_fetch_and)                                                \
  CUDASIM_RMW(N, T, fetch_or, __atomic_fetch_or)                                                  \
  CUDASIM_RMW(N, T, fetch_xor, __atomic_fetch_xor)                                                \
  CUDASIM_RMW(N, T, fetch_nand, __atomic_fetch_nand)                                              \
  int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int mo, int) {         \
    access((void*)a, sizeof(T), true, true, CUDASIM_PC);                                          \
    return __atomic_compare_exchange_n(a, c, v, false, mo, __ATOMIC_RELAXED);                     \
  }                                                                                               \
  int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int mo, int) {           \
    access((void*)a, sizeof(T), true, true, CUDASIM_PC);                                          \
    return __atomic_compare_exchange_n(a, c, v, true, mo, __ATOMIC_RELAXED);                      \
  }                                                                                               \
  T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int mo, int) {               \
    access((void*)a, sizeof(T), true, true, CUDASIM_PC);                                          \
    __atomic_compare_exchange_n(a, &c, v, false, mo, __ATOMIC_RELAXED);                           \
    return c;                                                                                     \
  }
CUDASIM_ATOMICS(8, char)
CUDASIM_ATOMICS(16, short)
CUDASIM_ATOMICS(32, int)
CUDASIM_ATOMICS(64, long long)
#undef CUDASIM_ATOMICS
#undef CUDASIM_RMW

void __tsan_atomic_thread_fence(int mo) { __atomic_thread_fence(mo); }
void __tsan_atomic_signal_fence(int mo) { __atomic_signal_fence(mo); }
}
