// firmad-bench: signatures per second and latency through firmad against the same
// signatures made in-process straight through PKCS#11, on one SoftHSM token, in one run.
#include <CLI/CLI.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iomanip>
#include <iostream>
#include <thread>

#include "client/firma.hpp"
#include "pkcs11/key.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/sign.hpp"
#include "pkcs11/uri.hpp"
#include "rig.hpp"

namespace {

using namespace firmad;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct Figures {
  double ops_per_sec = 0;
  double p50_us = 0;
  double p99_us = 0;
  long ops = 0;
};

// Runs `threads` workers for `seconds`; each calls make_worker(i) once and the
// returned function once per operation. Latency is per operation.
template <typename MakeWorker>
Figures measure_once(int threads, double seconds, MakeWorker make_worker) {
  std::vector<std::vector<double>> lat(threads);
  std::vector<std::exception_ptr> errors(threads);
  std::atomic<bool> go{false};
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  Clock::time_point start, stop;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        auto op = make_worker(t);
        lat[t].reserve(200000);
        ++ready;
        while (!go.load()) std::this_thread::yield();
        const auto end = start + std::chrono::duration<double>(seconds);
        for (auto now = Clock::now(); now < end;) {
          op();
          const auto after = Clock::now();
          lat[t].push_back(std::chrono::duration<double, std::micro>(after - now).count());
          now = after;
        }
      } catch (...) {
        errors[t] = std::current_exception();
        ++ready;
      }
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  start = Clock::now();
  go = true;
  for (auto& th : pool) th.join();
  stop = Clock::now();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Figures f;
  f.ops = static_cast<long>(all.size());
  f.ops_per_sec = all.size() / std::chrono::duration<double>(stop - start).count();
  if (!all.empty()) {
    f.p50_us = all[all.size() / 2];
    f.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return f;
}

// A shared two-core machine is noisy: each figure is the round with the
// median throughput out of `rounds`.
int rounds = 3;
template <typename MakeWorker>
Figures measure(int threads, double seconds, MakeWorker make_worker) {
  std::vector<Figures> all;
  for (int r = 0; r < rounds; ++r) all.push_back(measure_once(threads, seconds, make_worker));
  std::sort(all.begin(), all.end(), [](const Figures& a, const Figures& b) { return a.ops_per_sec < b.ops_per_sec; });
  return all[all.size() / 2];
}

Json to_json(const Figures& f) {
  return {{"ops_per_sec", std::round(f.ops_per_sec * 10) / 10}, {"p50_us", std::round(f.p50_us * 10) / 10},
          {"p99_us", std::round(f.p99_us * 10) / 10}, {"ops", f.ops}};
}

struct KeyCase {
  const char* name;   // in the output
  const char* alias;  // in firmad.toml
  const char* uri;
  double ratio_target;  // daemon 4 clients ÷ in-process 2 threads
};

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "firmad-bench: " << e.what() << "\n";
    return 1;
  }
}

int run(int argc, char** argv) {
  CLI::App app{"firmad-bench: firmad's signing throughput and latency against direct PKCS#11, on SoftHSM"};
  double seconds = 1.0;
  bool json = false;
  app.add_option("--seconds", seconds, "Length of each measurement")->check(CLI::Range(0.2, 60.0))->capture_default_str();
  app.add_flag("--json", json, "Print the figures as one JSON object");
  app.add_option("--rounds", rounds, "Rounds per figure; the median round is reported")->check(CLI::Range(1, 15))->capture_default_str();
  int busy_poll_us = 50, sessions = 2;
  app.add_option("--busy-poll-us", busy_poll_us, "firmad's [daemon] busy_poll_us")->capture_default_str();
  app.add_option("--sessions", sessions, "firmad's signing sessions for the token")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  test::TokenRig rig;
  auto cfg = rig.write_config({{"log_level", "log_level = \"warning\"\nmax_connections_per_peer = 64\nbusy_poll_us = " + std::to_string(busy_poll_us)},
                               {"sessions", "sessions = " + std::to_string(sessions)}});
  test::Daemon daemon(cfg, rig.socket());
  if (!test::eventually([&] { return firma::Client(rig.socket().string()).status()["tokens"][0]["loggedIn"].get<bool>(); }))
    throw std::runtime_error("firmad did not log in: " + daemon.log());
  const long rss_idle = daemon.rss_kib();
  const long rss_anon_idle = daemon.rss_anon_kib();
  // What holding a logged-in session costs any process, measured now.
  const auto base = test::run(std::string(FIRMAD_RSS_BASELINE) + " " + test::TokenRig::kModule + " " + test::TokenRig::kPin);
  const long rss_baseline = base.exit_code == 0 ? std::stol(base.out) : -1;

  auto module = pkcs11::Module::shared(test::TokenRig::kModule);
  pkcs11::SlotId slot = 0;
  const auto token_uri = pkcs11::Uri::parse("pkcs11:token=firmad-demo");
  for (auto s : module->slots_with_token())
    if (token_uri.matches_token(*module, s)) slot = s;
  pkcs11::Session login_session(module, slot);
  login_session.login(test::TokenRig::kPin);

  const std::vector<std::uint8_t> digest(32, 0x5a);
  // The protocol's own round trip, no token work: what the daemon adds at least.
  const Figures ping = measure(1, seconds / 2, [&](int) {
    auto client = std::make_shared<firma::Client>(rig.socket().string());
    return [client] { client->call("org.varlink.service.GetInfo"); };
  });
  const KeyCase cases[] = {{"rsa2048", "empresa", "pkcs11:object=empresa", 0.95},
                           {"p256", "firma-ec", "pkcs11:object=firma-ec", 0.75}};
  Json out = {{"seconds_per_measurement", seconds}, {"rounds", rounds}, {"getinfo_round_trip", to_json(ping)}};
  bool all_met = true;
  for (const auto& kc : cases) {
    const auto key = pkcs11::find_key(login_session, pkcs11::Uri::parse(kc.uri));
    const pkcs11::Scheme scheme = key->type == pkcs11::KeyType::Rsa ? pkcs11::Scheme::RsaPkcs1 : pkcs11::Scheme::Ecdsa;
    Json inproc, via_daemon;
    std::map<int, Figures> in_f, d_f;
    for (int threads : {1, 2}) {
      in_f[threads] = measure(threads, seconds, [&](int) {
        auto session = std::make_shared<pkcs11::Session>(module, slot);
        pkcs11::SignRequest req{scheme, pkcs11::Hash::Sha256, digest, std::nullopt};
        return [session, req, &key] { pkcs11::sign(*session, *key->private_key, key->type, req); };
      });
      inproc[std::to_string(threads)] = to_json(in_f[threads]);
    }
    for (int clients : {1, 2, 4, 16}) {
      d_f[clients] = measure(clients, seconds, [&](int) {
        auto client = std::make_shared<firma::Client>(rig.socket().string());
        return [client, &digest, alias = std::string(kc.alias)] { client->sign_digest(alias, digest); };
      });
      via_daemon[std::to_string(clients)] = to_json(d_f[clients]);
    }
    const double ratio = d_f[4].ops_per_sec / in_f[2].ops_per_sec;
    const double overhead = d_f[1].p50_us - in_f[1].p50_us;
    const bool ratio_met = ratio >= kc.ratio_target, latency_met = overhead <= 25.0;
    all_met = all_met && ratio_met && latency_met;
    out[kc.name] = {{"in_process", inproc},
                    {"daemon", via_daemon},
                    {"ratio_daemon4_vs_inprocess2", std::round(ratio * 1000) / 1000},
                    {"ratio_target", kc.ratio_target},
                    {"ratio_met", ratio_met},
                    {"p50_overhead_us", std::round(overhead * 10) / 10},
                    {"p50_overhead_target_us", 25},
                    {"p50_overhead_met", latency_met}};
  }
  login_session.logout();
  const long rss_after = daemon.rss_kib();
  out["rss_kib"] = {{"idle", rss_idle},
                    {"idle_anon", rss_anon_idle},
                    {"after", rss_after},
                    {"baseline_module_logged_in", rss_baseline},
                    {"idle_minus_baseline", rss_idle - rss_baseline},
                    {"idle_target", 8192},
                    {"idle_met", rss_idle <= 8192}};
  all_met = all_met && rss_idle <= 8192;
  out["all_targets_met"] = all_met;
  daemon.terminate();

  if (json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << std::fixed << std::setprecision(1);
  std::cout << "firmad-bench: SoftHSM token, median of " << rounds << " rounds of " << seconds << " s per figure, "
            << std::thread::hardware_concurrency() << " CPU(s)\n\n";
  std::cout << std::left << std::setw(10) << "key" << std::setw(22) << "path" << std::right << std::setw(12) << "sig/s"
            << std::setw(12) << "p50 us" << std::setw(12) << "p99 us" << "\n";
  for (const auto& kc : cases) {
    const auto& k = out[kc.name];
    for (const auto& [n, f] : k["in_process"].items())
      std::cout << std::left << std::setw(10) << kc.name << std::setw(22) << ("in-process " + n + " thr") << std::right
                << std::setw(12) << f["ops_per_sec"].get<double>() << std::setw(12) << f["p50_us"].get<double>()
                << std::setw(12) << f["p99_us"].get<double>() << "\n";
    for (const char* n : {"1", "2", "4", "16"}) {
      const auto& f = k["daemon"][n];
      std::cout << std::left << std::setw(10) << kc.name << std::setw(22) << (std::string("daemon ") + n + " client(s)")
                << std::right << std::setw(12) << f["ops_per_sec"].get<double>() << std::setw(12)
                << f["p50_us"].get<double>() << std::setw(12) << f["p99_us"].get<double>() << "\n";
    }
  }
  std::cout << std::left << std::setw(32) << "GetInfo round trip (no token)" << std::right << std::setw(12)
            << ping.ops_per_sec << std::setw(12) << ping.p50_us << std::setw(12) << ping.p99_us << "\n";
  std::cout << "\nratios and targets\n";
  for (const auto& kc : cases) {
    const auto& k = out[kc.name];
    std::cout << "  " << kc.name << ": daemon 4 clients / in-process 2 threads = " << std::setprecision(3)
              << k["ratio_daemon4_vs_inprocess2"].get<double>() << " (target >= " << kc.ratio_target << ") "
              << (k["ratio_met"].get<bool>() ? "met" : "NOT MET") << "\n"
              << std::setprecision(1) << "  " << kc.name << ": single-client p50 overhead = "
              << k["p50_overhead_us"].get<double>() << " us (target <= 25) "
              << (k["p50_overhead_met"].get<bool>() ? "met" : "NOT MET") << "\n";
  }
  std::cout << "  daemon RSS idle " << rss_idle << " KiB (target <= 8192) " << (rss_idle <= 8192 ? "met" : "NOT MET")
            << ", of it anonymous " << rss_anon_idle << " KiB; after the run " << rss_after << " KiB\n"
            << "  baseline: a bare C process holding the same logged-in session " << rss_baseline
            << " KiB; firmad above it " << rss_idle - rss_baseline << " KiB\n";
  return 0;
}
