// firmad-load: a well-behaved client's signing throughput alone and then while 1,000
// connections and abusive peers press on the same firmad, with firmad's memory,
// connections and the way each abusive connection ended, all in one run.
#include <CLI/CLI.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <iomanip>
#include <iostream>
#include <thread>

#include "abusive_peers.hpp"
#include "client/firma.hpp"
#include "rig.hpp"

namespace {

using namespace firmad;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using load::Kind;

struct PkeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey read_public_key(const std::filesystem::path& pem) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(pem.c_str(), "r"), &std::fclose);
  if (!f) throw std::runtime_error("cannot open " + pem.string());
  Pkey k(PEM_read_PUBKEY(f.get(), nullptr, nullptr, nullptr));
  if (!k) throw std::runtime_error("cannot read a public key from " + pem.string());
  return k;
}

// Whether `sig` is a valid SHA-256 signature (RSA PKCS#1 v1.5 or ECDSA) over `digest`.
bool verifies(EVP_PKEY* key, const firma::Bytes& digest, const firma::Bytes& sig) {
  std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(EVP_PKEY_CTX_new(key, nullptr), &EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA &&
      (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1 ||
       EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) != 1))
    return false;
  return EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), digest.data(), digest.size()) == 1;
}

// One well-behaved client: one connection, one key, sequential signatures.
struct GoodClient {
  std::string name, alias;
  Pkey key;
  std::unique_ptr<firma::Client> client;
};

struct Figures {
  double ops_per_sec = 0, p50_us = 0, p99_us = 0;
  long ops = 0, failures = 0, verified = 0;
};

Figures sign_for(GoodClient& g, const std::string& socket, double seconds) {
  std::vector<double> lat;
  std::vector<std::pair<firma::Bytes, firma::Bytes>> signed_digests;
  Figures f;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  for (std::uint64_t i = 0;; ++i) {
    const auto before = Clock::now();
    if (before >= end) break;
    firma::Bytes digest(32, 0x5a);
    for (int b = 0; b < 8; ++b) digest[b] = static_cast<std::uint8_t>(i >> (8 * b));
    try {
      if (!g.client) g.client = std::make_unique<firma::Client>(socket);
      auto sig = g.client->sign_digest(g.alias, digest);
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - before).count());
      signed_digests.emplace_back(std::move(digest), std::move(sig));
    } catch (const firma::ConnectionError&) {
      ++f.failures;
      g.client.reset();  // connect again on the next round
    } catch (const std::exception&) {
      ++f.failures;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::sort(lat.begin(), lat.end());
  f.ops = static_cast<long>(lat.size());
  f.ops_per_sec = f.ops / elapsed;
  if (!lat.empty()) {
    f.p50_us = lat[lat.size() / 2];
    f.p99_us = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  }
  for (const auto& [d, s] : signed_digests) f.verified += verifies(g.key.get(), d, s);
  return f;
}

double round1(double v) { return std::round(v * 10) / 10; }

// CPU seconds (user + system) a process has used so far, or -1.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 2));
  std::string skip;
  for (int i = 3; i < 14; ++i) fields >> skip;  // state .. cmajflt
  double utime = 0, stime = 0;
  fields >> utime >> stime;
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The 1-minute load average: others' work on the same CPUs skews every figure.
double load_average() {
  std::ifstream in("/proc/loadavg");
  double one = -1;
  in >> one;
  return one;
}

// CPU used by firmad and by this program over a stretch of wall time, in cores.
class CpuShare {
 public:
  explicit CpuShare(pid_t pid) : pid_(pid), wall_(Clock::now()), daemon_(cpu_seconds(pid)), self_(cpu_seconds(::getpid())) {}
  std::pair<double, double> cores() const {
    const double wall = std::chrono::duration<double>(Clock::now() - wall_).count();
    return {(cpu_seconds(pid_) - daemon_) / wall, (cpu_seconds(::getpid()) - self_) / wall};
  }

 private:
  pid_t pid_;
  Clock::time_point wall_;
  double daemon_, self_;
};

Json to_json(const Figures& f) {
  return {{"sig_per_sec", round1(f.ops_per_sec)}, {"p50_us", round1(f.p50_us)}, {"p99_us", round1(f.p99_us)},
          {"signatures", f.ops}, {"verified", f.verified}, {"failures", f.failures}};
}

Json to_json(const load::Tally& t) {
  return {{"connections", t.connections},
          {"replies", t.replies},
          {"ended_protocol_violation", t.protocol_violation},
          {"ended_idle_timeout", t.closed_after_idle_timeout},
          {"ended_at_once", t.closed_early},
          {"hung_up", t.hung_up},
          {"connect_failed", t.connect_failed},
          {"other_errors", t.other_errors},
          {"first_close_s", std::round(t.first_close_s * 100) / 100},
          {"last_close_s", std::round(t.last_close_s * 100) / 100},
          {"bytes_sent", t.bytes_sent}};
}

// firmad's memory and connections, sampled while the abuse runs.
class Sampler {
 public:
  Sampler(pid_t pid, long listeners) : pid_(pid), listeners_(listeners), thread_([this] { run(); }) {}
  ~Sampler() {
    stop_ = true;
    thread_.join();
  }
  long max_rss() const { return max_rss_; }
  long max_held() const { return max_held_; }

 private:
  void run() {
    while (!stop_) {
      max_rss_ = std::max(max_rss_.load(), load::proc_status_kib(pid_, "VmRSS"));
      max_held_ = std::max(max_held_.load(), load::socket_fds(pid_) - listeners_);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // sampling period
    }
  }
  pid_t pid_;
  long listeners_;
  std::atomic<bool> stop_{false};
  std::atomic<long> max_rss_{0}, max_held_{0};
  std::thread thread_;
};

struct Plan {
  double seconds = 3.0;
  int held = 1000, max_connections = 1100, silent = 20, slow = 20, half_open = 20, half_closed = 20, oversize = 4,
      endless = 4, over_limit = 100, slow_interval_ms = 100, daemon_nofile = 1024;
  std::vector<std::string> keys = {"p256", "rsa2048"};
};

int run(int argc, char** argv);

void print(const Json& out, bool json) {
  if (json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  const auto& d = out["daemon"];
  const auto& c = out["connections"];
  const auto& r = out["rss_kib"];
  const auto& e = out["daemon_log_events"];
  std::cout << std::fixed << std::setprecision(1);
  std::cout << "firmad-load: SoftHSM token, " << out["cpus"].get<int>() << " CPU(s), "
            << out["seconds_per_measurement"].get<double>() << " s per key and phase, load average at start "
            << out["load_average_at_start"].get<double>() << "\n"
            << "firmad: max_connections " << d["max_connections"] << " (per uid " << d["max_connections_per_peer"]
            << "), idle_timeout_ms " << d["idle_timeout_ms"] << ", open files: started with "
            << d["open_file_limit_given"] << ", running with " << d["open_file_limit_running"] << "\n\n";
  std::cout << "good client, one connection " << std::setw(14) << "sig/s" << std::setw(10) << "p50 us" << std::setw(10)
            << "p99 us" << std::setw(10) << "failed" << std::setw(10) << "verified" << "\n";
  for (const auto& [key, g] : out["good_client"].items()) {
    for (const char* phase : {"alone", "under_abuse"}) {
      const auto& f = g[phase];
      std::cout << "  " << std::left << std::setw(8) << key << std::setw(18) << (std::string(phase) == "alone" ? "alone" : "under abuse")
                << std::right << std::setw(14) << f["sig_per_sec"].get<double>() << std::setw(10) << f["p50_us"].get<double>()
                << std::setw(10) << f["p99_us"].get<double>() << std::setw(10) << f["failures"].get<long>()
                << std::setw(10) << f["verified"].get<long>() << "\n";
    }
    std::cout << "  " << std::left << std::setw(26) << (key + " ratio") << std::right << std::setw(14)
              << std::setprecision(3) << g["ratio"].get<double>() << std::setprecision(1) << "\n";
  }
  const auto& cpu = out["cpu_cores_used"];
  std::cout << std::setprecision(2) << "CPU used, in cores: firmad " << cpu["firmad_alone"].get<double>() << " alone, "
            << cpu["firmad_under_abuse"].get<double>() << " under abuse; this program (good client, peers) "
            << cpu["firmad_load_alone"].get<double>() << " and " << cpu["firmad_load_under_abuse"].get<double>()
            << std::setprecision(1) << "\n";
  std::cout << "\nconnections: " << c["held_served_getinfo"] << " held (each served a GetInfo); the daemon held "
            << c["held_at_limit"] << " when at the limit, at most " << c["held_max"] << ", after the run "
            << c["held_after"] << "; abuse phase " << c["abuse_phase_s"].get<double>() << " s; the streaming peers sent "
            << c["streamed_mb"].get<double>() << " MB in " << c["streams_s"].get<double>() << " s\n\n";
  std::cout << std::left << std::setw(14) << "peers" << std::right << std::setw(8) << "conns" << std::setw(10) << "replies"
            << std::setw(12) << "Protocol-" << std::setw(10) << "idle" << std::setw(10) << "at once" << std::setw(8)
            << "hung up" << "   closed after (s)\n"
            << std::setw(44) << "Violation" << std::setw(10) << "timeout" << "\n";
  for (const auto& [kind, t] : out["peers"].items()) {
    std::cout << std::left << std::setw(14) << kind << std::right << std::setw(8) << t["connections"].get<long>()
              << std::setw(10) << t["replies"].get<long>() << std::setw(12) << t["ended_protocol_violation"].get<long>()
              << std::setw(10) << t["ended_idle_timeout"].get<long>() << std::setw(10) << t["ended_at_once"].get<long>()
              << std::setw(8) << t["hung_up"].get<long>() << "   " << std::setprecision(2)
              << t["first_close_s"].get<double>() << " - " << t["last_close_s"].get<double>() << std::setprecision(1)
              << (t["connect_failed"].get<long>() ? "  connect failed " + std::to_string(t["connect_failed"].get<long>()) : "")
              << "\n";
  }
  std::cout << "\nfirmad log lines (and events a throttle left out):";
  for (const auto& [name, n] : e.items()) std::cout << " " << name << " " << n["lines"] << " (+" << n["not_logged"] << ")";
  std::cout << "\n"
            << "firmad VmRSS (KiB): start " << r["start"] << ", before abuse " << r["before"] << ", max during "
            << r["during_max"] << ", after " << r["after"] << "; VmHWM before " << r["hwm_before"] << ", after "
            << r["hwm_after"] << "\n"
            << "firmad after the run: " << (out["daemon_running_after"].get<bool>() ? "running" : "NOT RUNNING")
            << ", status " << (out["status_after"].get<bool>() ? "answered" : "NOT ANSWERED")
            << ", exit status on SIGTERM " << out["exit_status"] << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "firmad-load: " << e.what() << "\n";
    return 1;
  }
}

namespace {

int run(int argc, char** argv) {
  CLI::App app{"firmad-load: a good client's signing rate alone and under 1,000 connections and abusive peers"};
  Plan plan;
  bool json = false;
  app.add_option("--seconds", plan.seconds, "Signing time per key and phase")->check(CLI::Range(0.5, 10.0))->capture_default_str();
  app.add_option("--keys", plan.keys, "Keys the good client signs with: p256, rsa2048")->check(CLI::IsMember({"p256", "rsa2048"}))->capture_default_str();
  app.add_option("--connections", plan.held, "Connections held open (each served one GetInfo)")->check(CLI::Range(0, 20000))->capture_default_str();
  app.add_option("--max-connections", plan.max_connections, "firmad's max_connections and max_connections_per_peer")->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--silent", plan.silent, "Peers that connect and send nothing")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--slow", plan.slow, "Peers sending one byte per --slow-interval-ms, never a NUL")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--slow-interval-ms", plan.slow_interval_ms, "Milliseconds between a slow peer's bytes")->check(CLI::Range(1, 10000))->capture_default_str();
  app.add_option("--half-open", plan.half_open, "Peers sending half a frame, then nothing")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--half-closed", plan.half_closed, "Peers sending half a frame, then shutdown(SHUT_WR)")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--oversize", plan.oversize, "Peers sending 2 MiB + 64 KiB without a NUL, again after each ending")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--endless", plan.endless, "Peers streaming without end, again after each ending")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--over-limit", plan.over_limit, "Silent peers opened once the others are in")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--daemon-nofile", plan.daemon_nofile, "Soft RLIMIT_NOFILE firmad is started with (0: this process's)")->capture_default_str();
  app.add_flag("--json", json, "Print the figures as one JSON object");
  CLI11_PARSE(app, argc, argv);

  const long peers_total = plan.held + plan.silent + plan.slow + plan.half_open + plan.half_closed + plan.oversize +
                           plan.endless + plan.over_limit;
  const long own_limit = load::raise_open_file_limit();
  if (own_limit < peers_total + 64)
    throw std::runtime_error("open-file limit " + std::to_string(own_limit) + " is too low for " +
                             std::to_string(peers_total) + " peers; raise the hard limit (ulimit -Hn)");
  // The held connections must outlive both measurements under abuse; the
  // silent, slow and half-open peers are cut by the same timeout after them.
  const auto idle_timeout = std::chrono::milliseconds(
      static_cast<long>(plan.seconds * 1000 * plan.keys.size()) + 3000);

  test::TokenRig rig;
  const auto cfg = rig.write_config(
      {{"log_level", "log_level = \"info\"\nmax_connections = " + std::to_string(plan.max_connections) +
                         "\nmax_connections_per_peer = " + std::to_string(plan.max_connections) +
                         "\nidle_timeout_ms = " + std::to_string(idle_timeout.count())}});
  // firmad starts with the soft limit systemd and login shells give (1024)
  // unless told otherwise; it must raise it itself to hold these connections.
  rlimit mine{};
  ::getrlimit(RLIMIT_NOFILE, &mine);
  rlimit for_daemon = mine;
  if (plan.daemon_nofile > 0 && static_cast<rlim_t>(plan.daemon_nofile) < mine.rlim_cur)
    for_daemon.rlim_cur = plan.daemon_nofile;
  ::setrlimit(RLIMIT_NOFILE, &for_daemon);
  std::unique_ptr<test::Daemon> daemon;
  try {
    daemon = std::make_unique<test::Daemon>(cfg, rig.socket());
  } catch (...) {
    ::setrlimit(RLIMIT_NOFILE, &mine);
    throw;
  }
  ::setrlimit(RLIMIT_NOFILE, &mine);
  const pid_t pid = daemon->pid();
  const long daemon_limit = load::open_file_limit(pid);
  const std::string socket = rig.socket().string();
  if (!test::eventually([&] { return firma::Client(socket).status()["tokens"][0]["loggedIn"].get<bool>(); }))
    throw std::runtime_error("firmad did not log in: " + daemon->log());
  // The listening socket(s): what remains when no client is connected.
  long listeners = 0;
  test::eventually([&] { return (listeners = load::socket_fds(pid)) <= 1; }, std::chrono::seconds(2));

  std::vector<GoodClient> good;
  for (const auto& k : plan.keys) {
    const bool p256 = k == "p256";
    good.push_back({k, p256 ? "firma-ec" : "empresa", read_public_key(rig.public_key_pem(p256 ? "02" : "01")),
                    std::make_unique<firma::Client>(socket)});
  }

  // Phase 1: the good client alone, after a short unmeasured warm-up (first
  // signatures pay for cold caches and lazily loaded code).
  const long rss_start = load::proc_status_kib(pid, "VmRSS");
  for (auto& g : good) sign_for(g, socket, 0.5);
  std::map<std::string, Figures> alone, pressed;
  const double load_at_start = load_average();
  const CpuShare alone_cpu(pid);
  for (auto& g : good) alone[g.name] = sign_for(g, socket, plan.seconds);
  const auto [daemon_cores_alone, self_cores_alone] = alone_cpu.cores();
  const long rss_before = load::proc_status_kib(pid, "VmRSS"), hwm_before = load::proc_status_kib(pid, "VmHWM");

  // Phase 2: the same while the peers press on.
  long held_at_limit = 0, held_served = 0, max_held = 0, max_rss = 0;
  std::map<Kind, load::Tally> tallies;
  bool all_ended = false;
  double abuse_seconds = 0, daemon_cores_pressed = 0, self_cores_pressed = 0, stream_seconds = 0;
  {
    const auto t0 = Clock::now();
    load::AbusivePeers peers(rig.socket(), idle_timeout, std::chrono::milliseconds(plan.slow_interval_ms));
    Sampler sampler(pid, listeners);
    peers.add(Kind::Held, plan.held);
    test::eventually([&] { return peers.tallies()[Kind::Held].replies >= plan.held; }, std::chrono::seconds(5));
    held_served = peers.tallies()[Kind::Held].replies;
    peers.add(Kind::Silent, plan.silent);
    peers.add(Kind::Slow, plan.slow);
    peers.add(Kind::HalfOpen, plan.half_open);
    peers.add(Kind::HalfClosed, plan.half_closed);
    // Once the daemon has taken in the peers that stay, more than it may
    // hold: those beyond max_connections are refused at once.
    const long staying = std::min<long>(plan.max_connections, plan.held + plan.silent + plan.slow + plan.half_open +
                                                                  static_cast<long>(good.size()));
    test::eventually([&] { return load::socket_fds(pid) - listeners >= staying; }, std::chrono::seconds(3));
    peers.add(Kind::OverLimit, plan.over_limit);
    const long to_refuse = std::max<long>(0, staying + plan.over_limit - plan.max_connections);
    test::eventually([&] { return peers.tallies()[Kind::OverLimit].closed_early >= to_refuse; }, std::chrono::seconds(2));
    held_at_limit = load::socket_fds(pid) - listeners;
    // Those it took in hang up, making room for the streams, which then
    // start again as soon as the daemon cuts them.
    peers.hang_up(Kind::OverLimit);
    peers.set_repeat(true);
    const auto streams_start = Clock::now();
    peers.add(Kind::Oversize, plan.oversize);
    peers.add(Kind::Endless, plan.endless);
    const CpuShare pressed_cpu(pid);
    for (auto& g : good) pressed[g.name] = sign_for(g, socket, plan.seconds);
    std::tie(daemon_cores_pressed, self_cores_pressed) = pressed_cpu.cores();
    peers.set_repeat(false);
    stream_seconds = std::chrono::duration<double>(Clock::now() - streams_start).count();
    good.clear();  // the good clients hang up; every other connection must end by the daemon's doing
    all_ended = peers.wait_all_ended(std::chrono::duration_cast<std::chrono::milliseconds>(
        idle_timeout + std::chrono::seconds(5) - (Clock::now() - t0)));
    abuse_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    max_held = sampler.max_held();
    max_rss = sampler.max_rss();
    peers.stop();
    tallies = peers.tallies();
  }
  long held_after = -1;
  test::eventually([&] { return (held_after = load::socket_fds(pid) - listeners) == 0; }, std::chrono::seconds(3));
  const long rss_after = load::proc_status_kib(pid, "VmRSS"), hwm_after = load::proc_status_kib(pid, "VmHWM");
  bool answers = false;
  try {
    answers = firma::Client(socket).status()["tokens"][0]["loggedIn"].get<bool>();
  } catch (const std::exception&) {
  }
  const bool running = daemon->running();
  const std::string log = daemon->log();
  const int exit_status = daemon->terminate();

  Json events = Json::object();
  for (const char* e : {"connection-timeout", "protocol-violation", "connection-refused", "accept-failed"}) {
    const auto n = load::count_events(log, e);
    events[e] = {{"lines", n.lines}, {"not_logged", n.left_out}};
  }
  Json good_json = Json::object();
  for (const auto& [name, a] : alone) {
    const Figures& p = pressed[name];
    good_json[name] = {{"alone", to_json(a)},
                       {"under_abuse", to_json(p)},
                       {"ratio", a.ops_per_sec > 0 ? std::round(p.ops_per_sec / a.ops_per_sec * 1000) / 1000 : 0}};
  }
  Json peers_json = Json::object();
  for (const auto& [kind, t] : tallies) peers_json[load::name(kind)] = to_json(t);
  Json out = {
      {"seconds_per_measurement", plan.seconds},
      {"cpus", std::thread::hardware_concurrency()},
      {"load_average_at_start", load_at_start},
      {"cpu_cores_used",
       {{"firmad_alone", std::round(daemon_cores_alone * 100) / 100},
        {"firmad_under_abuse", std::round(daemon_cores_pressed * 100) / 100},
        {"firmad_load_alone", std::round(self_cores_alone * 100) / 100},
        {"firmad_load_under_abuse", std::round(self_cores_pressed * 100) / 100}}},
      {"daemon",
       {{"max_connections", plan.max_connections},
        {"max_connections_per_peer", plan.max_connections},
        {"idle_timeout_ms", idle_timeout.count()},
        {"open_file_limit_given", plan.daemon_nofile > 0 ? plan.daemon_nofile : static_cast<long>(mine.rlim_cur)},
        {"open_file_limit_running", daemon_limit}}},
      {"good_client", good_json},
      {"connections",
       {{"held_served_getinfo", held_served},
        {"held_at_limit", held_at_limit},
        {"held_max", max_held},
        {"held_after", held_after},
        {"all_abusive_ended", all_ended},
        {"streams_s", round1(stream_seconds)},
        {"streamed_mb", std::round((tallies[Kind::Oversize].bytes_sent + tallies[Kind::Endless].bytes_sent) / 1e5) / 10},
        {"abuse_phase_s", round1(abuse_seconds)}}},
      {"peers", peers_json},
      {"daemon_log_events", events},
      {"rss_kib",
       {{"start", rss_start},
        {"before", rss_before},
        {"during_max", max_rss},
        {"after", rss_after},
        {"hwm_before", hwm_before},
        {"hwm_after", hwm_after}}},
      {"daemon_running_after", running},
      {"status_after", answers},
      {"exit_status", exit_status}};
  print(out, json);
  // The figures are reported, not judged; a firmad that did not come through is.
  if (!running || !answers || exit_status != 0) {
    std::cerr << "firmad-load: firmad did not come through the run; its log:\n" << log;
    return 1;
  }
  return 0;
}

}  // namespace
