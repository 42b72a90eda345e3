// firmad-peer: abusive peers of one kind against a firmad socket, for a while,
// then their tally as JSON on stdout. firmad-load and the fair-share tests run
// it under setpriv, so the abuse comes from another uid than theirs.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>
#include <thread>

#include "abusive_peers.hpp"

int main(int argc, char** argv) {
  CLI::App app{"firmad-peer: abusive peers of one kind, then their tally as JSON"};
  std::string socket, kind_name, key = "empresa";
  int count = 1;
  double seconds = 1;
  long idle_timeout_ms = 30000;
  bool once = false;
  app.add_option("--socket", socket, "firmad's socket")->required();
  app.add_option("--kind", kind_name, "held, silent, slow, endless, oversize, deny, violate, ...")->required();
  app.add_option("--count", count, "Connections")->check(CLI::Range(1, 20000))->capture_default_str();
  app.add_option("--seconds", seconds, "How long they press on")->check(CLI::Range(0.0, 120.0))->capture_default_str();
  app.add_option("--key", key, "The key Deny peers ask for")->capture_default_str();
  app.add_option("--idle-timeout-ms", idle_timeout_ms, "firmad's idle_timeout_ms, to tell its cuts apart")->capture_default_str();
  app.add_flag("--once", once, "Do not connect again after an ending (endless, oversize, deny, violate repeat by default)");
  CLI11_PARSE(app, argc, argv);
  try {
    using namespace firmad::load;
    const Kind kind = kind_named(kind_name);
    raise_open_file_limit();
    AbusivePeers peers(socket, std::chrono::milliseconds(idle_timeout_ms));
    peers.set_deny_key(key);
    peers.set_repeat(!once);
    peers.add(kind, count);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));  // the abuse's duration
    peers.stop();
    const Tally t = peers.tallies()[kind];
    nlohmann::json out = {{"kind", kind_name},
                          {"connections", t.connections},
                          {"replies", t.replies},
                          {"access_denied", t.access_denied},
                          {"other_errors", t.other_errors},
                          {"protocol_violation", t.protocol_violation},
                          {"buffers_full", t.buffers_full},
                          {"closed_after_idle_timeout", t.closed_after_idle_timeout},
                          {"closed_early", t.closed_early},
                          {"hung_up", t.hung_up},
                          {"connect_failed", t.connect_failed},
                          {"bytes_sent", t.bytes_sent}};
    std::cout << out.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "firmad-peer: " << e.what() << "\n";
    return 1;
  }
}
