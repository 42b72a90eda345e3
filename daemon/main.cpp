// firmad: keeps signing keys on PKCS#11 tokens and signs for local programs.
#include <CLI/CLI.hpp>
#include "daemon/asio.hpp"
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <functional>
#include <iostream>
#include <thread>

#include "daemon/busy_poll.hpp"
#include "daemon/config.hpp"
#include "daemon/log.hpp"
#include "daemon/audit.hpp"
#include "daemon/serial_thread.hpp"
#include "daemon/server/server.hpp"
#include "daemon/server/service.hpp"
#include "daemon/server/systemd.hpp"
#include "daemon/token/token_worker.hpp"
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

// Every connection is a descriptor, and systemd and login shells start
// processes with a soft limit of 1024: raise it as far as max_connections
// needs (plus room for tokens, state and renewal), never above the hard
// limit. Not to the hard limit itself: helpers firmad runs inherit it.
// Returns the soft limit firmad runs with.
rlim_t raise_open_file_limit(std::size_t max_connections, rlim_t headroom) {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  const rlim_t wanted = max_connections + headroom;
  if (r.rlim_cur < wanted) {
    r.rlim_cur = std::min(wanted, r.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &r);
    ::getrlimit(RLIMIT_NOFILE, &r);
  }
  return r.rlim_cur;
}

// Adds the keys brought in with 'firmactl import', kept in the state directory.
void add_imported_keys(firmad::Config& cfg, const nlohmann::json& state) {
  auto keys = state.find("keys");
  if (keys == state.end() || !keys->is_object()) return;
  for (const auto& [alias, k] : keys->items()) {
    try {
      firmad::KeyConfig key;
      key.alias = alias;
      key.token = k.at("token").get<std::string>();
      key.uri = k.at("uri").get<std::string>();
      key.allow.users = k.value("allowUsers", std::vector<uid_t>{});
      key.allow.groups = k.value("allowGroups", std::vector<gid_t>{});
      key.npie = k.value("npie", "");
      key.registro_patronal = k.value("registroPatronal", "");
      key.role = k.value("role", "principal");
      key.imported = true;
      if (cfg.key(alias) || !cfg.token(key.token)) {
        firmad::log::warning("imported-key-skipped", {{"key", alias}, {"why", cfg.key(alias) ? "alias also in the configuration" : "token not configured"}});
        continue;
      }
      cfg.keys.push_back(std::move(key));
    } catch (const std::exception& e) {
      firmad::log::error("imported-key-unreadable", {{"key", alias}, {"error", e.what()}});
    }
  }
}

// A renewal that installed a new key recorded where its objects are now.
// It applies only while firmad.toml still names the URI it replaced: an
// administrator who points the key elsewhere wins.
void apply_renewed_key_uris(firmad::Config& cfg, const nlohmann::json& state) {
  auto uris = state.find("keyUris");
  if (uris == state.end() || !uris->is_object()) return;
  for (auto& key : cfg.keys) {
    auto it = uris->find(key.alias);
    if (it == uris->end() || !it->is_object()) continue;
    const std::string uri = it->value("uri", ""), configured = it->value("configured", "");
    if (uri.empty()) continue;
    if (!key.imported && configured != key.uri) {
      firmad::log::warning("renewed-key-uri-ignored", {{"key", key.alias}, {"renewed", uri}, {"configured", key.uri},
                                                       {"why", "firmad.toml no longer names the key a renewal replaced"}});
      continue;
    }
    firmad::log::info("renewed-key-uri", {{"key", key.alias}, {"uri", uri}});
    key.uri = uri;
  }
}

// Keys cancelled earlier stay cancelled across restarts.
void restore_cancellations(std::vector<std::unique_ptr<firmad::TokenWorker>>& workers, const nlohmann::json& state) {
  auto cancelled = state.find("cancelled");
  if (cancelled == state.end() || !cancelled->is_object()) return;
  for (const auto& [alias, c] : cancelled->items()) {
    for (auto& w : workers)
      if (w->config().name == c.value("token", "")) w->mark_cancelled(alias, {c.value("time", std::time_t{0}), c.value("reason", "")});
  }
}

firmad::BusinessCalendar calendar_of(const firmad::Config& cfg) {
  std::vector<firmad::Date> extra;
  for (const auto& d : cfg.calendar.extra_non_working_days)
    if (auto date = firmad::Date::parse(d)) extra.push_back(*date);
  return firmad::BusinessCalendar(std::move(extra));
}

std::vector<std::unique_ptr<firmad::TokenWorker>> make_workers(const firmad::Config& cfg) {
  std::vector<std::unique_ptr<firmad::TokenWorker>> workers;
  for (const auto& t : cfg.tokens) {
    std::vector<firmad::KeyConfig> keys;
    for (const auto& k : cfg.keys)
      if (k.token == t.name) keys.push_back(k);
    try {
      // One file per token, in the state directory (0700, firmad's own).
      const auto refused_pins = std::filesystem::path(cfg.daemon.state_directory) / ("pin-refused-" + t.name + ".json");
      workers.push_back(std::make_unique<firmad::TokenWorker>(t, std::move(keys), cfg.daemon.busy_poll, refused_pins));
    } catch (const std::invalid_argument& e) {
      throw firmad::ConfigError(cfg.path + ": tokens." + t.name + " or its keys: " + e.what());
    }
  }
  return workers;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"firmad: signs for local programs with keys kept on PKCS#11 tokens"};
  app.footer("Exit codes: 0 stopped cleanly (or --check-config: valid); 1 could not start or run; 2 configuration invalid.\n"
             "Signals: SIGTERM/SIGINT finish in-flight requests, log out of the tokens and exit 0;\n"
             "SIGHUP opens the audit file again (after logrotate).");
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
  // Before any module is loaded: their stderr lines are logged, throttled.
  // (Released last: the writer below may write to the kept stderr until it stops.)
  firmad::log::capture_stderr();
  struct StderrGuard {
    ~StderrGuard() { firmad::log::release_stderr(); }
  } stderr_guard;
  // From here on no thread waits for stderr (a stalled journald); the
  // guard writes what is queued on every way out.
  firmad::log::start_writer();
  struct LogWriterGuard {
    ~LogWriterGuard() { firmad::log::stop_writer(); }
  } log_writer_guard;
  harden_process();
  constexpr rlim_t kFdHeadroom = 256;
  if (const rlim_t fds = raise_open_file_limit(cfg.daemon.max_connections, kFdHeadroom);
      fds < cfg.daemon.max_connections + kFdHeadroom)
    firmad::log::warning("open-file-limit-low", {{"limit", fds}, {"max_connections", cfg.daemon.max_connections},
                                                 {"fix", "raise the hard limit: LimitNOFILE= in the unit, or ulimit -Hn"}});

  try {
    firmad::StateStore state(cfg.daemon.state_directory);
    const nlohmann::json saved = state.read();
    add_imported_keys(cfg, saved);
    for (auto& key : cfg.keys) key.configured_uri = key.uri;
    apply_renewed_key_uris(cfg, saved);
    workers = make_workers(cfg);
    restore_cancellations(workers, saved);
    boost::asio::io_context io(1);
    firmad::Audit audit(cfg.daemon, io);  // throws naming the file if it cannot be opened
    firmad::SerialThread disk("firmad-disk");
    firmad::renewal::Manager renewals(cfg, workers, state);
    renewals.set_audit(&audit);
    firmad::Service service(cfg, workers, state, calendar_of(cfg), renewals, audit, disk);
    firmad::FairShare share(io, cfg.daemon.max_buffered_bytes, cfg.daemon.max_buffered_bytes_per_peer);
    service.set_peers_report([&share] { return share.peers_json(); });
    firmad::Server server(io, cfg, service, share);
    // Signals are caught from here on: a SIGTERM during start-up (a token
    // slow to log in) still ends in an orderly stop.
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    // SIGHUP: open the audit file again (logrotate's postrotate; a moved
    // file is also noticed within a second without it).
    boost::asio::signal_set hangup(io, SIGHUP);
    std::function<void()> on_hangup = [&] {
      hangup.async_wait([&](const boost::system::error_code& ec, int) {
        if (ec) return;
        audit.reopen();
        on_hangup();
      });
    };
    on_hangup();
    std::thread renewal_stopper;
    server.open();  // first: a second daemon on the same socket stops before touching the token
    state.remove_temporaries();  // only now: another firmad's write under way is not ours to remove
    renewals.remove_temporaries();
    audit.start();
    for (auto& w : workers) w->start();
    // Serve once every token has been scanned and, where the PIN source is
    // unattended, logged in: the first client sees the settled state.
    for (auto& w : workers) w->wait_discovered();
    server.start();
    renewals.start();
    // The watchdog is pinged from the I/O thread: a wedged event loop stops
    // the pings and systemd restarts the daemon.
    boost::asio::steady_timer watchdog(io);
    std::function<void()> ping;
    if (const auto interval = firmad::systemd::watchdog_interval(); interval.count() > 0) {
      ping = [&, interval] {
        firmad::systemd::notify("WATCHDOG=1");
        watchdog.expires_after(interval / 2);
        watchdog.async_wait([&](const boost::system::error_code& ec) {
          if (!ec) ping();
        });
      };
      ping();
    }
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      firmad::log::notice("signal", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      firmad::systemd::notify("STOPPING=1");
      watchdog.cancel();
      hangup.cancel();
      server.shutdown();
      // Off the I/O thread: the step under way may take its network time
      // limit, and callers following a renewal are told it rests.
      renewal_stopper = std::thread([&renewals] { renewals.stop(); });
    });
    ::signal(SIGPIPE, SIG_IGN);
    firmad::log::notice("started", {{"version", FIRMAD_VERSION}, {"config", config_path}, {"tokens", cfg.tokens.size()},
                                    {"keys", cfg.keys.size()}});
    firmad::systemd::notify("READY=1\nSTATUS=serving");
    run_io(io, cfg.daemon.busy_poll);
    if (renewal_stopper.joinable()) renewal_stopper.join();
    renewals.stop();
    for (auto& w : workers) w->stop();
    audit.stop();  // every record of a call that was answered is written
    firmad::log::notice("stopped", {{"audit_records", audit.written()}});
    return 0;
  } catch (const std::exception& e) {
    firmad::log::error("fatal", {{"error", e.what()}});
    for (auto& w : workers) w->stop();
    return kExitRuntime;
  }
}
