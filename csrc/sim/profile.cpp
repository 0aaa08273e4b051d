// profile.cpp -- the simulator's memory-access profile (gpunet._C_simcheck):
// per kernel launch, the figures Nsight Compute reports for memory, from the
// same instrumented accesses the race checker sees (racecheck.cpp classifies
// each access as shared or global and hands it on while profiling is on).
//
// A warp-level instruction is rebuilt from the lanes' accesses: the
// simulator runs a warp's lanes one after another between sync points, so
// the k-th execution of an instruction (code address) by each lane of a warp
// is one request. Per request:
//   global: the 32-byte sectors its lanes' bytes fall in;
//   shared: wavefronts = for each phase (all 32 lanes for accesses up to 4
//           bytes, half-warps for 8, quarter-warps for 16), the most distinct
//           4-byte words that fall in one of the 32 banks (one word read by
//           several lanes is a broadcast), summed over the phases;
//   the active lanes.
// Also per launch: barriers per block, and the distinct sectors touched in
// global memory (the bytes an ideal cache would move from DRAM).
#include <set>
#include <unordered_set>

namespace cudasim {
namespace profile {
namespace {

struct Request {
  bool write = false, shared = false;
  unsigned lanes = 0;
  std::vector<std::pair<uintptr_t, uint32_t>> parts;  // (address, bytes) per lane
};

struct Warp {
  std::unordered_map<uint64_t, uint32_t> executions;     // (code address, lane) -> times executed
  std::map<std::pair<const void*, uint32_t>, Request> requests;  // (code address, k) -> request
};

struct State {
  bool on = false;
  Record rec;
  std::vector<Warp> warps;
  std::unordered_set<uintptr_t> load_sectors, store_sectors;
  std::vector<Record> done;
};

thread_local State S;

uint64_t sectors_of(const Request& r) {
  std::unordered_set<uintptr_t> s;
  for (const auto& [a, n] : r.parts)
    for (uintptr_t x = a >> 5; x <= (a + n - 1) >> 5; ++x) s.insert(x);
  return s.size();
}

// Bytes the request uses: a byte read by several lanes (a broadcast) counts once.
uint64_t distinct_bytes(const Request& r) {
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;
  for (const auto& [a, n] : r.parts) spans.emplace_back(a, a + n);
  std::sort(spans.begin(), spans.end());
  uint64_t total = 0;
  uintptr_t covered = 0;
  for (const auto& [lo, hi] : spans) {
    const uintptr_t from = std::max(lo, covered);
    if (hi > from) total += hi - from;
    covered = std::max(covered, hi);
  }
  return total;
}

uint64_t wavefronts_of(const Request& r, const std::vector<unsigned>& lane_of) {
  const uint32_t size = r.parts.empty() ? 4 : r.parts[0].second;
  const unsigned lanes_per_phase = size <= 4 ? 32 : size == 8 ? 16 : 8;
  std::map<unsigned, std::map<unsigned, std::set<uintptr_t>>> phases;  // phase -> bank -> words
  for (size_t i = 0; i < r.parts.size(); ++i) {
    const auto& [a, n] = r.parts[i];
    for (uintptr_t w = a >> 2; w <= (a + n - 1) >> 2; ++w) phases[lane_of[i] / lanes_per_phase][w % 32].insert(w);
  }
  uint64_t total = 0;
  for (const auto& [phase, banks] : phases) {
    size_t most = 0;
    for (const auto& [bank, words] : banks) most = std::max(most, words.size());
    total += most;
  }
  return total;
}

void finish_block() {
  for (Warp& w : S.warps) {
    for (const auto& [key, r] : w.requests) {
      Record::Counters& c = S.rec.counters;
      std::vector<unsigned> lane_of;
      for (unsigned l = 0; l < 32; ++l)
        if (r.lanes & (1u << l)) lane_of.push_back(l);
      const uint64_t bytes = distinct_bytes(r);
      c.lane_slots += lane_of.size();
      ++c.warp_requests;
      if (r.shared) {
        (r.write ? c.shared_store_requests : c.shared_load_requests) += 1;
        (r.write ? c.shared_store_wavefronts : c.shared_load_wavefronts) += wavefronts_of(r, lane_of);
      } else {
        (r.write ? c.global_store_requests : c.global_load_requests) += 1;
        (r.write ? c.global_store_sectors : c.global_load_sectors) += sectors_of(r);
        (r.write ? c.global_store_bytes : c.global_load_bytes) += bytes;
      }
    }
    w = Warp{};
  }
}

}  // namespace

void set_enabled(bool on) {
  S = State{};
  S.on = on;
}

bool enabled() { return S.on; }

void launch_begin(const char* kname, dim3 grid, dim3 block, size_t smem) {
  if (!S.on) return;
  S.rec = Record{};
  // kname is "kernel <name> launched at <file>:<line>": keep the name
  const std::string full = kname, pre = "kernel ", mid = " launched at ";
  const size_t at = full.find(mid);
  S.rec.kernel = full.rfind(pre, 0) == 0 && at != std::string::npos ? full.substr(pre.size(), at - pre.size()) : full;
  S.rec.grid = grid;
  S.rec.block = block;
  S.rec.smem = smem;
  S.load_sectors.clear();
  S.store_sectors.clear();
}

void block_begin(unsigned nthreads) {
  if (S.on) S.warps.assign((nthreads + 31) / 32, Warp{});
}

void access(bool shared, uintptr_t addr, size_t size, bool write, const void* pc, unsigned tid) {
  if (!S.on || tid / 32 >= S.warps.size()) return;
  Warp& w = S.warps[tid / 32];
  const unsigned lane = tid % 32;
  const uint32_t k = w.executions[((uint64_t)(uintptr_t)pc << 5) | lane]++;
  Request& r = w.requests[{pc, k}];
  r.write = write;
  r.shared = shared;
  r.lanes |= 1u << lane;
  r.parts.emplace_back(addr, (uint32_t)size);
  if (!shared)
    for (uintptr_t x = addr >> 5; x <= (addr + size - 1) >> 5; ++x) (write ? S.store_sectors : S.load_sectors).insert(x);
}

void block_end(unsigned barriers) {
  if (!S.on) return;
  finish_block();
  S.rec.counters.barriers += barriers;
  ++S.rec.counters.blocks;
}

void launch_end() {
  if (!S.on) return;
  S.rec.counters.dram_sectors = S.load_sectors.size() + S.store_sectors.size();
  S.done.push_back(std::move(S.rec));
  S.rec = Record{};
}

std::vector<Record> take() {
  std::vector<Record> out;
  out.swap(S.done);
  return out;
}

}  // namespace profile
}  // namespace cudasim
