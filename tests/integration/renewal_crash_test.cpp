// Renewal killed at every write firmad makes to the token's files, the state directory and the certificate files.
//
// A counting run under strace lists the writes (write, pwrite64, ftruncate,
// rename, unlink, fsync, ...) that touch those files. Then, for each N, the
// same renewal starts from the same token and state under strace, which holds
// each such call for a moment after it returns (delay_exit); when the Nth one
// shows in the trace, the test kills firmad with SIGKILL. firmad restarts
// without strace, the renewal finishes (by itself, or by 'renew' if nothing of
// it was recorded yet), and the test asserts what a user must be able to rely
// on: one served pair, whole, signing and verifying against the served
// certificate; the certificate file equal to it; one certificate asked of the
// CA; no temporary file left. SoftHSM object files a kill left half-written
// belong to objects no renewal step ever reads again: the half-made new key
// pair of a kill during generation is destroyed by CKA_ID on resume (checked:
// the number of private keys grows by exactly one per renewal with a new key).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "renewal_fixture.hpp"

namespace firmad::test {
namespace {

constexpr const char* kWrites = "write,pwrite64,ftruncate,rename,renameat,renameat2,unlink,unlinkat,fsync,fdatasync";

class RenewalCrash : public Renewal {
 protected:
  fs::path trace = rig.dir() / "trace.txt";
  fs::path snapshot = rig.dir() / "snapshot";
  std::string tables;

  void SetUp() override {
    Renewal::SetUp();
    if (run("command -v strace").exit_code != 0) GTEST_FAIL() << "strace is missing (./run.sh installs it)";
  }

  // The configuration with few log lines: each write to the log is held by strace too.
  std::map<std::string, std::string> quiet() const {
    return {{"log_level =", "log_level = \"warning\""},
            {"uri = \"pkcs11:object=empresa;id=%01\"",
             "uri = \"pkcs11:object=empresa;id=%01\"\nnpie = \"" + std::string(kNpie) + "\""}};
  }

  // Whether firmad serves the key (false while it cannot be reached).
  bool serving() {
    try {
      return key("empresa").value("found", false);
    } catch (const std::exception&) {
      return false;
    }
  }

  // firmad under strace, holding each write `delay_us` after it returns.
  void start_traced(int delay_us) {
    daemon.reset();
    fs::remove(trace);
    Daemon::Options o;
    o.launcher = {"/usr/bin/strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", std::string("trace=") + kWrites,
                  "-o", trace.string()};
    if (delay_us > 0)
      o.launcher.insert(o.launcher.begin() + 5, {"-e", std::string("inject=") + kWrites + ":delay_exit=" + std::to_string(delay_us)});
    daemon = std::make_unique<Daemon>(rig.write_config(quiet(), tables), rig.socket(), o);
    ASSERT_TRUE(eventually([&] { return serving(); }, std::chrono::seconds(20))) << daemon->log();
  }

  void start_plain() {
    daemon.reset();
    daemon = std::make_unique<Daemon>(rig.write_config(quiet(), tables), rig.socket());
    ASSERT_TRUE(eventually([&] { return serving(); }, std::chrono::seconds(20))) << daemon->log();
  }

  // The traced calls that wrote to the token, the state directory or the certificate files, in order.
  std::vector<std::string> writes() const {
    std::vector<std::string> out;
    std::ifstream in(trace);
    std::string line;
    const std::string token = (rig.dir() / "tokens").string(), state = (rig.dir() / "state").string(),
                      files = Renewal::out.string();
    while (std::getline(in, line))
      if (line.find(token) != std::string::npos || line.find(state) != std::string::npos ||
          line.find(files) != std::string::npos)
        out.push_back(line);
    return out;
  }

  // Token, state and certificate files as they were before the renewal.
  void save() {
    fs::remove_all(snapshot);
    fs::create_directories(snapshot);
    for (const char* d : {"tokens", "state"}) fs::copy(rig.dir() / d, snapshot / d, fs::copy_options::recursive);
    fs::copy(out, snapshot / "out", fs::copy_options::recursive);
  }
  void restore() {
    for (const char* d : {"tokens", "state"}) {
      fs::remove_all(rig.dir() / d);
      fs::copy(snapshot / d, rig.dir() / d, fs::copy_options::recursive);
    }
    fs::remove_all(out);
    fs::copy(snapshot / "out", out, fs::copy_options::recursive);
  }

  long submissions() const {
    const std::string log = ca->requests();
    long n = 0;
    for (std::size_t at = 0; (at = log.find("POST /idse/solicitudRenovacion", at)) != std::string::npos; ++at) ++n;
    return n;
  }
  // Private key objects on the token: those with a CKA_ID, and those without
  // one (half-created by a kill inside SoftHSM's key generation: no CKA_ID and
  // no label, so no URI of firmad's ever selects them).
  struct PrivateKeys {
    long with_id = 0, half_created = 0;
    std::string listing;
  };
  PrivateKeys private_keys() {
    PrivateKeys keys;
    keys.listing = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
                       " --list-objects --type privkey 2>/dev/null").out;
    std::istringstream in(keys.listing);
    std::string line, label, id;
    bool open = false;
    auto close = [&] {
      if (open) ++(id.empty() ? keys.half_created : keys.with_id);
      if (open && id.empty() && !label.empty()) keys.with_id += 1000;  // a labelled key without id: not half-created
      label.clear(), id.clear();
    };
    while (std::getline(in, line)) {
      if (line.rfind("Private Key Object", 0) == 0) close(), open = true;
      else if (line.find("label:") != std::string::npos) label = line.substr(line.find(':') + 1), label.erase(0, label.find_first_not_of(' '));
      else if (line.find("ID:") != std::string::npos) id = line.substr(line.find(':') + 1), id.erase(0, id.find_first_not_of(' '));
    }
    close();
    return keys;
  }

  // Temporary files of interrupted writes left where firmad writes.
  std::string temporaries() const {
    std::string found;
    for (const auto& dir : {rig.dir() / "state", rig.dir() / "state" / "backup", fs::path(out)}) {
      std::error_code ec;
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.find(".firmad-") != std::string::npos) found += name + " ";
      }
    }
    return found;
  }

  // Restarts firmad plainly and lets the renewal finish; then what a user
  // relies on. `submissions_allowed`: how many requests the CA may have got.
  void expect_recovered(const std::string& where, long keys_after, long submitted_before, long submissions_allowed = 1) {
    expect_recovered(where, keys_after, submitted_before, 1, submissions_allowed);
  }
  void expect_recovered(const std::string& where, long keys_after, long submitted_before, long submissions_least,
                        long submissions_most) {
    SCOPED_TRACE(where);
    start_plain();
    // Resumed by itself when a step was recorded (firmad loads its records
    // before it serves, so status shows the step at once); otherwise nothing
    // of it is recorded and an administrator's 'renew' starts it (as one would).
    if (const std::string s = state("empresa"); s.empty() || s == "none") {
      ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
    }
    ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(30)))
        << state("empresa") << "\n" << key("empresa").dump() << "\n" << daemon->log();
    const auto k = key("empresa");
    EXPECT_TRUE(k.value("found", false)) << k.dump();
    const fs::path served = token_certificate("empresa");
    EXPECT_EQ(certificate_key(served), k["publicKey"].get<std::string>()) << "the served key is its certificate's";
    EXPECT_EQ(read_file(out / "empresa.pem"), read_file(served)) << "the certificate file is the served one";
    EXPECT_TRUE(signs_for("empresa", served));
    const auto keys = private_keys();
    EXPECT_EQ(keys.with_id, keys_after) << "one new key pair, nothing half-made under an id\n" << keys.listing;
    if (keys.half_created > 0)
      std::cout << "[ renewal  ] " << where << ": " << keys.half_created
                << " private key object(s) SoftHSM left half-created (no CKA_ID, no label; firmad never selects them)"
                << std::endl;
    const long asked = submissions() - submitted_before;
    EXPECT_GE(asked, submissions_least) << ca->requests();
    EXPECT_LE(asked, submissions_most) << ca->requests();
    EXPECT_EQ(temporaries(), "");
  }

  // The sweep for one renewal table: count, then kill at each write N with
  // N % shards == shard (the shards together cover every write).
  void kill_at_every_write(bool new_key, std::size_t shard, std::size_t shards) {
    start_ca();
    tables = table("empresa", "idse", new_key ? "key_type = \"ec-p256\"\n" : "key = \"reuse\"\n");
    start_plain();
    const long keys_before = private_keys().with_id;
    const long keys_after = keys_before + (new_key ? 1 : 0);
    daemon.reset();
    save();

    // Counting run.
    start_traced(0);
    // Writes of the start (SoftHSM's token files at login) come before the
    // renewal: counted from where the renewal begins.
    const std::size_t idle = writes().size();
    ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
    const std::size_t count = writes().size() - idle;
    ASSERT_GT(count, 5u) << read_file(trace);
    daemon.reset();
    std::cout << "[ renewal  ] " << (new_key ? "new key" : "reused key") << ": " << count
              << " writes to the token, state and certificate files" << std::endl;

    // FIRMAD_TEST_KILL_AT=N runs only that kill point (to look into one).
    const char* only = std::getenv("FIRMAD_TEST_KILL_AT");
    for (std::size_t n = 1 + shard; n <= count; n += shards) {
      if (only && std::to_string(n) != only) continue;
      const std::string where = "killed at write " + std::to_string(n) + " of " + std::to_string(count);
      long submitted = 0;
      std::string at;
      // The kill lands while strace holds the Nth write (each write is held
      // 3 ms: long enough for this thread, polling each millisecond, to see
      // it; longer made the sweep twice as slow); if the machine was too
      // slow and it landed later, that point is tried again (twice).
      std::size_t landed = 0;
      for (int attempt = 0; attempt < 3; ++attempt) {
        restore();
        submitted = submissions();
        start_traced(3000);
        const std::size_t idle = writes().size();
        std::thread renew([&] { (void)ctl("renew empresa", 60); });
        bool reached = false;
        for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
             std::chrono::steady_clock::now() < end; std::this_thread::sleep_for(std::chrono::milliseconds(1))) {
          const auto w = writes();
          if (w.size() >= idle + n) {
            at = w[idle + n - 1];
            reached = true;
            break;
          }
          if (!daemon->running()) break;
        }
        if (const pid_t pid = daemon->daemon_pid(); pid > 0) ::kill(pid, SIGKILL);
        renew.join();
        ASSERT_TRUE(reached) << where;
        ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(10))) << where;
        landed = writes().size() - idle;
        if (landed <= n + 1) break;  // the Nth, or another thread's write in the same instant
        std::cout << "[ renewal  ] " << where << ": the kill landed at write " << landed << ", tried again" << std::endl;
        daemon.reset();
      }
      EXPECT_LE(landed, n + 1) << where << ": the kill landed at write " << landed;
      // A reused key's request may go out again when the kill fell while it
      // was being sent (recorded as 'submitting', its answer not yet): only a
      // new key tells the CA's certificate for it apart.
      long most = 1;
      if (!new_key) {
        const auto saved = firma::Json::parse(read_file(rig.dir() / "state" / "state.json"), nullptr, false);
        const auto record = saved.is_object() ? saved.value("renewals", firma::Json::object()).value("empresa", firma::Json::object())
                                              : firma::Json::object();
        if (record.value("step", "") == "request-built" && record.value("submitting", false)) {
          most = 2;
          std::cout << "[ renewal  ] " << where << ": killed while the request was being sent: a reused key's "
                    << "request may be sent again" << std::endl;
        }
      }
      expect_recovered(where + " (" + at.substr(0, 160) + ")", keys_after, submitted, 1, most);
      daemon.reset();
      if (HasFatalFailure()) return;
    }
  }
};

// Each renewal kind in shards, so that ctest runs them side by side and each
// stays within its time limit.
constexpr std::size_t kShards = 8;

class KillAtEveryWrite : public RenewalCrash, public ::testing::WithParamInterface<std::tuple<bool, std::size_t>> {};

TEST_P(KillAtEveryWrite, LeavesOneWholeServedPairAndOneCertificateAsked) {
  const auto [new_key, shard] = GetParam();
  kill_at_every_write(new_key, shard, kShards);
}

INSTANTIATE_TEST_SUITE_P(Renewal, KillAtEveryWrite,
                         ::testing::Combine(::testing::Bool(), ::testing::Range<std::size_t>(0, kShards)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "NewKey" : "ReusedKey") + "Shard" +
                                  std::to_string(std::get<1>(info.param));
                         });

// Kills at random moments while the CA takes a few hundred milliseconds per
// answer, each followed by the same checks (a bounded number of rounds).
TEST_F(RenewalCrash, KillsAtRandomMomentsAgainstASlowCa) {
  start_ca();
  tables = table("empresa", "idse", "key_type = \"ec-p256\"\n");
  start_plain();
  const long keys_before = private_keys().with_id;
  daemon.reset();
  save();
  ca->control("delay=300");
  std::mt19937 random(std::random_device{}());
  for (int round = 1; round <= 8; ++round) {
    const int after_ms = std::uniform_int_distribution<int>(0, 1500)(random);
    const std::string where = "round " + std::to_string(round) + ", killed after " + std::to_string(after_ms) + " ms";
    restore();
    const long submitted = submissions();
    start_plain();
    std::thread renew([&] { (void)ctl("renew empresa", 60); });
    std::this_thread::sleep_for(std::chrono::milliseconds(after_ms));  // the random moment under test
    ::kill(daemon->pid(), SIGKILL);
    renew.join();
    ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(10))) << where;
    // Killed while the request was on its way, the CA may still be working on
    // it when firmad asks whether it has it (each answer takes 300 ms here):
    // then the request goes out once more. Any other moment: once.
    const auto saved = firma::Json::parse(read_file(rig.dir() / "state" / "state.json"), nullptr, false);
    const auto record = saved.is_object() ? saved.value("renewals", firma::Json::object()).value("empresa", firma::Json::object())
                                          : firma::Json::object();
    const long most = record.value("step", "") == "request-built" && record.value("submitting", false) ? 2 : 1;
    expect_recovered(where, keys_before + 1, submitted, 1, most);
    daemon.reset();
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace firmad::test
