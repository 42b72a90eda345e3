// firmad: keeps signing keys on PKCS#11 tokens and signs for local programs.
#include <CLI/CLI.hpp>
#include "daemon/asio.hpp"
#include <boost/asio/signal_set.hpp>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <iostream>

#include "daemon/busy_poll.hpp"
#include "daemon/config.hpp"
#include "daemon/log.hpp"
#include "daemon/server.hpp"
#include "daemon/service.hpp"
#include "daemon/systemd.hpp"
#include "daemon/token_worker.hpp"
#include "firmad_version.hpp"
#include "pkcs11/uri.hpp"

namespace {

// Exit codes: 0 success, 1 could not start or run, 2 configuration invalid.
constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

// Runs the I/O thread. After each burst of work it polls for up to
// `busy_poll` before sleeping in epoll: the reply a signing thread posts, or
// the client's next request, then costs no thread wakeup.
void run_io(boost::asio::io_context& io, std::chrono::microseconds busy_poll) {
  if (busy_poll.count() == 0) {
    io.run();
    return;
  }
  while (!io.stopped()) {
    if (io.poll() > 0) continue;
    if (firmad::spin_until([&] { return io.poll() > 0 || io.stopped(); }, busy_poll)) continue;
    if (io.run_one() == 0) break;  // sleeps until the next handler; 0 once out of work
  }
}

// A process holding a logged-in token session must not leave core dumps or
// be readable through ptrace by other processes of the same user.
void harden_process() {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

std::vector<std::unique_ptr<firmad::TokenWorker>> make_workers(const firmad::Config& cfg) {
  std::vector<std::unique_ptr<firmad::TokenWorker>> workers;
  for (const auto& t : cfg.tokens) {
    std::vector<firmad::KeyConfig> keys;
    for (const auto& k : cfg.keys)
      if (k.token == t.name) keys.push_back(k);
    try {
      workers.push_back(std::make_unique<firmad::TokenWorker>(t, std::move(keys), cfg.daemon.busy_poll));
    } catch (const std::invalid_argument& e) {
      throw firmad::ConfigError(cfg.path + ": tokens." + t.name + " or its keys: " + e.what());
    }
  }
  return workers;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"firmad: signs for local programs with keys kept on PKCS#11 tokens"};
  std::string config_path = firmad::kDefaultConfigPath;
  bool check_only = false;
  app.add_option("-c,--config", config_path, "Configuration file")->capture_default_str();
  app.add_flag("--check-config", check_only, "Validate the configuration, explain any error and exit");
  app.set_version_flag("--version", std::string("firmad ") + FIRMAD_VERSION);
  CLI11_PARSE(app, argc, argv);

  firmad::Config cfg;
  std::vector<std::unique_ptr<firmad::TokenWorker>> workers;
  try {
    cfg = firmad::load_config(config_path);
    workers = make_workers(cfg);  // parses every PKCS#11 URI
  } catch (const firmad::ConfigError& e) {
    std::cerr << "firmad: invalid configuration: " << e.what() << "\n";
    return kExitConfig;
  } catch (const std::exception& e) {
    std::cerr << "firmad: cannot read configuration: " << e.what() << "\n";
    return kExitConfig;
  }
  if (check_only) {
    std::cout << config_path << ": valid (" << cfg.tokens.size() << " token(s), " << cfg.keys.size() << " key(s))\n";
    return 0;
  }
  firmad::log::set_max_level(cfg.daemon.log_level);
  harden_process();

  try {
    boost::asio::io_context io(1);
    firmad::Service service(cfg, workers);
    firmad::Server server(io, cfg, service);
    for (auto& w : workers) w->start();
    server.open();
    // Serve once every token has been scanned and, where the PIN source is
    // unattended, logged in: the first client sees the settled state.
    for (auto& w : workers) w->wait_discovered();
    server.start();
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      firmad::log::notice("signal", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      firmad::systemd::notify("STOPPING=1");
      server.shutdown();
    });
    ::signal(SIGPIPE, SIG_IGN);
    firmad::log::notice("started", {{"version", FIRMAD_VERSION}, {"config", config_path}, {"tokens", cfg.tokens.size()},
                                    {"keys", cfg.keys.size()}});
    firmad::systemd::notify("READY=1\nSTATUS=serving");
    run_io(io, cfg.daemon.busy_poll);
    for (auto& w : workers) w->stop();
    firmad::log::notice("stopped");
    return 0;
  } catch (const std::exception& e) {
    firmad::log::error("fatal", {{"error", e.what()}});
    for (auto& w : workers) w->stop();
    return kExitRuntime;
  }
}
