// firmad-load: a well-behaved client's signing throughput alone, then under each
// kind of abuse from another uid (firmad-peer run by setpriv): its ratio to
// alone, p50/p99, firmad's CPU by thread, VmHWM and log and audit lines a
// second, all measured in one run against one firmad.
#include <CLI/CLI.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <dirent.h>

#include <future>

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

// The 1-minute load average: others' work on the same CPUs skews every figure.
double load_average() {
  std::ifstream in("/proc/loadavg");
  double one = -1;
  in >> one;
  return one;
}

Json to_json(const Figures& f) {
  return {{"sig_per_sec", round1(f.ops_per_sec)}, {"p50_us", round1(f.p50_us)}, {"p99_us", round1(f.p99_us)},
          {"signatures", f.ops}, {"verified", f.verified}, {"failures", f.failures}};
}

// CPU seconds by thread name (the I/O thread is the main one: "io").
std::map<std::string, double> cpu_by_thread(pid_t pid) {
  std::map<std::string, double> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(entry.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::string name = stat.substr(open + 1, close - open - 1);
    if (entry.path().filename() == std::to_string(pid)) name = "io";
    else if (name.rfind("firmad-sign-", 0) == 0) name = "firmad-sign";  // all signing threads together
    std::istringstream fields(stat.substr(close + 2));
    std::string skip;
    for (int i = 3; i < 14; ++i) fields >> skip;
    double utime = 0, stime = 0;
    fields >> utime >> stime;
    out[name] += (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  return out;
}

long count_lines(const std::string& text) { return static_cast<long>(std::count(text.begin(), text.end(), '\n')); }

// One condition: the abusers (firmad-peer processes as another uid) and what they do.
struct Condition {
  std::string name, what;
  std::vector<std::string> peers;  // firmad-peer arguments, one process each
};

struct Plan {
  double seconds = 3.0;
  std::vector<std::string> keys = {"p256"};
  uid_t attacker = 65534;
  int streamers = 8, silent = 1000, slow = 50, flooders = 8, max_connections = 1100;
};

// firmad-peer as `uid`, in the background; its output when it ends.
std::future<test::CommandResult> peers_as(uid_t uid, const std::string& socket, const std::string& args) {
  const std::string cmd = "setpriv --reuid=" + std::to_string(uid) + " --regid=65534 --clear-groups -- " +
                          test::quote(FIRMAD_PEER) + " --socket " + test::quote(socket) + " " + args;
  return std::async(std::launch::async, [cmd] { return test::run(cmd, 120); });
}

class Bench {
 public:
  Bench(const Plan& plan, bool quiet) : plan_(plan), quiet_(quiet) {}

  // Starts firmad on the rig's token: `limits` are [daemon] lines.
  void start(test::TokenRig& rig, const std::string& limits) {
    daemon_.reset();
    const auto cfg = rig.write_config({{"log_level", "log_level = \"info\"\nsocket_group = \"nogroup\"\n" + limits}});
    daemon_ = std::make_unique<test::Daemon>(cfg, rig.socket());
    socket_ = rig.socket().string();
    audit_ = rig.audit_log();
    if (!test::eventually([&] { return firma::Client(socket_).status()["tokens"][0]["loggedIn"].get<bool>(); }))
      throw std::runtime_error("firmad did not log in: " + daemon_->log());
    // Other uids reach the socket through the (private) test directory.
    ::chmod(rig.dir().c_str(), 0711);
    ::chmod((rig.dir() / "run").c_str(), 0711);
    good_.clear();
    for (const auto& k : plan_.keys) {
      const bool p256 = k == "p256";
      good_.push_back({k, p256 ? "firma-ec" : "empresa", read_public_key(rig.public_key_pem(p256 ? "02" : "01")),
                       std::make_unique<firma::Client>(socket_)});
    }
    for (auto& g : good_) sign_for(g, socket_, 0.3);  // warm-up, unmeasured
  }

  // Measures the good clients while the condition's peers press on.
  Json measure(const Condition& c, const Json* alone) {
    if (!quiet_) std::cerr << "firmad-load: " << c.name << " (" << c.what << ")\n";
    const pid_t pid = daemon_->pid();
    std::vector<std::future<test::CommandResult>> peers;
    const double peer_seconds = plan_.seconds * good_.size() + 1.5;
    for (const auto& args : c.peers)
      peers.push_back(peers_as(plan_.attacker, socket_, args + " --seconds " + std::to_string(peer_seconds)));
    if (!peers.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(700));  // the peers connect and press on
    {
      std::ofstream reset("/proc/" + std::to_string(pid) + "/clear_refs");
      reset << "5";  // VmHWM from here
    }
    const auto cpu_before = cpu_by_thread(pid);
    const long log_before = count_lines(daemon_->log()), audit_before = count_lines(test::read_file(audit_));
    const auto t0 = Clock::now();
    Json out = {{"what", c.what}};
    for (auto& g : good_) {
      const Figures f = sign_for(g, socket_, plan_.seconds);
      Json j = to_json(f);
      if (alone) {
        const Json& a = (*alone)["signer"][g.name];
        j["ratio"] = a["sig_per_sec"].get<double>() > 0 ? std::round(f.ops_per_sec / a["sig_per_sec"].get<double>() * 1000) / 1000 : 0;
        j["p99_ratio"] = a["p99_us"].get<double>() > 0 ? std::round(f.p99_us / a["p99_us"].get<double>() * 100) / 100 : 0;
      }
      out["signer"][g.name] = j;
    }
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const auto cpu_after = cpu_by_thread(pid);
    Json cpu = Json::object();
    for (const auto& [name, s] : cpu_after) {
      const auto b = cpu_before.find(name);
      cpu[name] = std::round((s - (b == cpu_before.end() ? 0 : b->second)) * 100) / 100;
    }
    out["firmad_cpu_s"] = cpu;
    out["wall_s"] = std::round(wall * 100) / 100;
    out["vmhwm_kib"] = load::proc_status_kib(pid, "VmHWM");
    out["log_lines_per_s"] = std::round((count_lines(daemon_->log()) - log_before) / wall * 10) / 10;
    out["audit_lines_per_s"] = std::round((count_lines(test::read_file(audit_)) - audit_before) / wall * 10) / 10;
    Json tallies = Json::array();
    for (auto& p : peers) {
      const auto r = p.get();
      try {
        tallies.push_back(Json::parse(r.out.substr(r.out.rfind('{'))));
      } catch (const std::exception&) {
        throw std::runtime_error("firmad-peer failed: " + r.out);
      }
    }
    if (!peers.empty()) out["peers"] = tallies;
    if (!daemon_->running()) throw std::runtime_error("firmad died under " + c.name + ": " + daemon_->log());
    return out;
  }

  int stop() { return daemon_ ? daemon_->terminate() : 0; }

 private:
  const Plan& plan_;
  bool quiet_;
  std::unique_ptr<test::Daemon> daemon_;
  std::string socket_;
  std::filesystem::path audit_;
  std::vector<GoodClient> good_;
};

void print(const Json& out) {
  std::cout << std::fixed << std::setprecision(2);
  std::cout << "firmad-load: SoftHSM token, " << out["cpus"].get<int>() << " CPU(s), " << out["seconds_per_measurement"]
            << " s per key and condition, load average at start " << out["load_average_at_start"]
            << "; abusers run as uid " << out["attacker_uid"] << ", the signer as uid 0\n\n";
  std::cout << std::left << std::setw(10) << "condition" << std::setw(8) << "key" << std::right << std::setw(10) << "sig/s"
            << std::setw(8) << "ratio" << std::setw(10) << "p50 us" << std::setw(10) << "p99 us" << std::setw(8) << "p99 x"
            << std::setw(10) << "VmHWM MiB" << std::setw(10) << "log/s" << std::setw(10) << "audit/s" << "   firmad CPU s by thread\n";
  for (const auto& [name, c] : out["conditions"].items()) {
    for (const auto& [key, f] : c["signer"].items()) {
      std::cout << std::left << std::setw(10) << name << std::setw(8) << key << std::right << std::setprecision(0)
                << std::setw(10) << f["sig_per_sec"].get<double>() << std::setprecision(2) << std::setw(8)
                << f.value("ratio", 1.0) << std::setprecision(0) << std::setw(10) << f["p50_us"].get<double>()
                << std::setw(10) << f["p99_us"].get<double>() << std::setprecision(2) << std::setw(8)
                << f.value("p99_ratio", 1.0) << std::setprecision(1) << std::setw(10)
                << c["vmhwm_kib"].get<long>() / 1024.0 << std::setw(10) << c["log_lines_per_s"].get<double>()
                << std::setw(10) << c["audit_lines_per_s"].get<double>() << "   ";
      for (const auto& [t, s] : c["firmad_cpu_s"].items()) std::cout << t << " " << std::setprecision(2) << s.get<double>() << "  ";
      std::cout << "\n";
    }
  }
  std::cout << "\n";
  for (const auto& [name, c] : out["conditions"].items()) std::cout << std::left << std::setw(10) << name << c["what"].get<std::string>() << "\n";
  std::cout << "\nratio: the signer's sig/s against alone, in the same run; p99 x: its p99 against alone.\n";
}

int run(int argc, char** argv) {
  CLI::App app{"firmad-load: a signer's rate alone and under abuse from another uid, condition by condition"};
  Plan plan;
  bool json = false;
  app.add_option("--seconds", plan.seconds, "Signing time per key and condition")->check(CLI::Range(0.5, 20.0))->capture_default_str();
  app.add_option("--keys", plan.keys, "Keys the signer uses: p256, rsa2048")->check(CLI::IsMember({"p256", "rsa2048"}))->capture_default_str();
  app.add_option("--attacker-uid", plan.attacker, "The uid the abusers run as")->capture_default_str();
  app.add_option("--streamers", plan.streamers, "junk: connections streaming without a NUL")->capture_default_str();
  app.add_option("--silent", plan.silent, "idle: connections that say nothing")->capture_default_str();
  app.add_option("--slow", plan.slow, "idle: connections sending a byte every 100 ms")->capture_default_str();
  app.add_option("--flooders", plan.flooders, "deny: connections pipelining refused Sign calls")->capture_default_str();
  app.add_flag("--json", json, "Print only one JSON object on stdout (progress goes to stderr)");
  CLI11_PARSE(app, argc, argv);
  load::raise_open_file_limit();

  const std::string n = std::to_string(plan.streamers), f = std::to_string(plan.flooders);
  const std::vector<Condition> conditions = {
      {"junk", n + " connections streaming junk without a NUL at full speed, reconnecting when cut",
       {"--kind endless --count " + n}},
      {"idle", std::to_string(plan.silent) + " silent connections and " + std::to_string(plan.slow) + " slowloris",
       {"--kind silent --once --count " + std::to_string(plan.silent), "--kind slow --once --count " + std::to_string(plan.slow)}},
      {"deny", f + " connections pipelining Sign for a key their uid may not use", {"--kind deny --key firma-ec --count " + f}},
  };
  const double load_at_start = load_average();
  test::TokenRig rig;
  Bench bench(plan, json);
  const std::string max = std::to_string(plan.max_connections);
  bench.start(rig, "max_connections = " + max + "\nmax_connections_per_peer = " + max + "\nidle_timeout_ms = 60000");
  Json out = {{"cpus", std::thread::hardware_concurrency()},
              {"seconds_per_measurement", plan.seconds},
              {"load_average_at_start", load_at_start},
              {"attacker_uid", plan.attacker}};
  Json alone = bench.measure({"alone", "the signer alone, one connection, one Sign at a time", {}}, nullptr);
  out["conditions"]["alone"] = alone;
  for (const auto& c : conditions) out["conditions"][c.name] = bench.measure(c, &alone);
  const int exit_status = bench.stop();

  // Memory: the default limits (128 connections, 16 a uid), seven uids with
  // every connection they may open streaming junk.
  bench.start(rig, "");
  Json alone_default = bench.measure({"alone", "", {}}, nullptr);
  Condition memory{"memory", "the default limits, 7 uids x 16 connections streaming junk (112 of 128)", {}};
  std::vector<std::future<test::CommandResult>> more;
  const double peer_seconds = plan.seconds * plan.keys.size() + 1.5;
  for (int u = 1; u < 7; ++u)  // the seventh uid is the condition's own
    more.push_back(peers_as(plan.attacker - u, rig.socket().string(),
                            "--kind endless --count 16 --seconds " + std::to_string(peer_seconds)));
  memory.peers = {"--kind endless --count 16"};
  out["conditions"]["memory"] = bench.measure(memory, &alone_default);
  for (auto& m : more) m.get();
  const int exit_status_default = bench.stop();
  out["exit_status"] = {exit_status, exit_status_default};

  if (json) std::cout << out.dump(2) << "\n";
  else print(out);
  // The figures are reported, not judged; a signature that failed or does
  // not verify, or a firmad that did not stop cleanly, is.
  int status = 0;
  for (const auto& [name, c] : out["conditions"].items())
    for (const auto& [key, f] : c["signer"].items())
      if (f["failures"].get<long>() != 0 || f["verified"].get<long>() != f["signatures"].get<long>()) {
        std::cerr << "firmad-load: under " << name << ", " << key << ": " << f.dump() << "\n";
        status = 1;
      }
  if (exit_status != 0 || exit_status_default != 0) {
    std::cerr << "firmad-load: firmad did not stop cleanly\n";
    status = 1;
  }
  return status;
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
