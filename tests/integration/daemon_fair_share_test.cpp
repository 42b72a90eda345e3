// Fair share and the audit trail under abuse from other uids (issue 12): the
// abusers are firmad-peer processes run by setpriv as uids other than the
// test's; firmad and the well-behaved client run as root.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <sstream>
#include <set>
#include <thread>

#include "daemon_fixture.hpp"
#include "tests/bench/abusive_peers.hpp"

namespace firmad::test {
namespace {

constexpr uid_t kAbuser = 65534;  // nobody
constexpr uid_t kOther = 65533;   // a uid that behaves
constexpr gid_t kSocketGroup = 65534;  // nogroup: the socket's group, every peer's primary group

class FairShareSuite : public DaemonSuite {
 protected:
  void SetUp() override {}
  static void SetUpTestSuite() {}
  void TearDown() override {
    daemon_.reset();
    rig_.reset();
  }

  // A daemon whose socket other uids in nogroup reach; `daemon` adds [daemon] settings.
  void start_open(const std::string& daemon = "") {
    start({{"log_level", "log_level = \"info\"\n" + daemon}});
  }

  // firmad-peer as `uid` (primary group nogroup, no others); its tally.
  static firma::Json peers_as(uid_t uid, const std::string& args) {
    const auto r = run(setpriv(uid) + " " + args, 60);
    EXPECT_EQ(r.exit_code, 0) << r.out;
    try {
      return firma::Json::parse(r.out.substr(r.out.rfind('{')));
    } catch (const std::exception&) {
      ADD_FAILURE() << "firmad-peer said: " << r.out;
      return firma::Json::object();
    }
  }
  static std::string setpriv(uid_t uid) {
    return "setpriv --reuid=" + std::to_string(uid) + " --regid=" + std::to_string(kSocketGroup) +
           " --clear-groups -- " + quote(FIRMAD_PEER) + " --socket " + quote(rig_->socket().string());
  }

  // firmad-peer as `uid` in the background, while `during` is called every
  // 20 ms; the tally once it ends.
  static firma::Json peers_as_while(uid_t uid, const std::string& args, const std::function<void()>& during) {
    auto peers = std::async(std::launch::async, [&] { return peers_as(uid, args); });
    while (peers.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) during();
    return peers.get();
  }

  // The most strikes Status showed for `uid` (0 if never held back).
  static void note_strikes(uid_t uid, double& most) {
    const firma::Json held = held_back(uid);
    if (!held.is_null()) most = std::max(most, held["strikes"].get<double>());
  }

  // Lines of the audit trail holding every one of `parts`.
  static long audit_lines(const std::vector<std::string>& parts) {
    const std::string audit = read_file(rig_->audit_log());
    long n = 0;
    for (std::size_t at = 0, eol; at < audit.size(); at = eol + 1) {
      eol = audit.find('\n', at);
      if (eol == std::string::npos) break;
      const std::string_view line(audit.data() + at, eol - at);
      bool all = true;
      for (const auto& p : parts) all = all && line.find(p) != std::string_view::npos;
      n += all;
    }
    return n;
  }

  // The admin's Status entry for a uid the server holds back, or null.
  static firma::Json held_back(uid_t uid) {
    const firma::Json status = client().status();
    for (const auto& p : status["heldBack"])
      if (p["uid"] == uid) return p;
    return nullptr;
  }
};

TEST_F(FairShareSuite, RefusedFloodIsAuditedInFullLoggedInBoundedLinesAndPaidForByItsUid) {
  start_open();
  const auto started = std::chrono::steady_clock::now();
  double strikes = 0, root_strikes = 0;
  const firma::Json t = peers_as_while(kAbuser, "--kind deny --count 4 --seconds 3 --key firma-ec", [&] {
    note_strikes(kAbuser, strikes);
    note_strikes(0, root_strikes);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const long answered = t.value("access_denied", 0L);
  ASSERT_GT(answered, 20) << t.dump();
  EXPECT_EQ(t.value("other_errors", -1L), 0) << t.dump();

  // The server held the flooding uid back (Status showed its strikes past
  // the 16 free ones while it flooded), and no one else.
  EXPECT_GT(strikes, 16) << client().status().dump();
  EXPECT_EQ(root_strikes, 0) << "the well-behaved root client has no strikes";

  // Every refused call has its record; the log tells the same number in few lines.
  const std::vector<std::string> refused = {" event=sign ", "uid=65534", "result=AccessDenied", "key=firma-ec"};
  long audited = 0;
  load::EventCount logged;
  EXPECT_TRUE(eventually(
      [&] {
        audited = audit_lines(refused);
        logged = load::count_events(daemon_->log(), "access-denied");
        return audited >= answered && logged.lines + logged.left_out == audited;
      },
      std::chrono::seconds(10)))
      << audited << " audited, " << answered << " answered, log: " << logged.lines << " lines + " << logged.left_out
      << " left out\n"
      << daemon_->log();
  EXPECT_GT(logged.left_out, 0) << "the flood went past the limit";
  // At most kThrottledPerSecond lines a second, plus the one that reports a flood's end.
  EXPECT_LE(logged.lines, static_cast<long>(5 * (seconds + 3))) << daemon_->log();
  expect_daemon_still_signs();
}

TEST_F(FairShareSuite, UidBreakingTheFramingIsHeldBackWhileAnotherUidIsNot) {
  start_open();
  // While uid 65534 breaks the framing again and again, another uid is
  // served as before and earns nothing.
  double strikes = 0, other_strikes = 0;
  firma::Json good;
  const firma::Json bad = peers_as_while(kAbuser, "--kind violate --count 4 --seconds 2", [&] {
    note_strikes(kAbuser, strikes);
    if (strikes > 16 && good.is_null()) good = peers_as(kOther, "--kind held --count 8 --seconds 0.5 --once");
    note_strikes(kOther, other_strikes);
  });
  EXPECT_GT(bad.value("protocol_violation", 0L), 16) << bad.dump();
  EXPECT_GT(strikes, 16) << client().status().dump();
  ASSERT_FALSE(good.is_null()) << "uid 65534 was never held back while it ran";
  EXPECT_EQ(good.value("replies", 0L), 8) << good.dump();
  EXPECT_EQ(other_strikes, 0) << client().status().dump();
  // The abuser's reconnections were slowed: 4 connections, each answered at
  // once, could have made thousands in 2 s.
  EXPECT_LT(bad.value("connections", 0L), 1000) << bad.dump();
  const auto violations = load::count_events(daemon_->log(), "protocol-violation");
  // One event per violating frame firmad read: each one the peer was told
  // of, and perhaps those of the connections it hung up at the end.
  EXPECT_TRUE(eventually([&] {
    const auto v = load::count_events(daemon_->log(), "protocol-violation");
    return v.lines + v.left_out >= bad.value("protocol_violation", 0L) &&
           v.lines + v.left_out <= bad.value("connections", 0L);
  })) << violations.lines << " + " << violations.left_out << " vs " << bad.dump();
  expect_daemon_still_signs();
}

TEST_F(FairShareSuite, EverySignatureOfABurstOfTenThousandHasItsAuditRecord) {
  start_open();
  constexpr int kThreads = 4, kEach = 2500;
  std::atomic<int> signed_ok{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto c = client();
      for (int i = 0; i < kEach; ++i) {
        firma::Bytes digest(32, 0);
        digest[0] = static_cast<std::uint8_t>(t);
        digest[1] = static_cast<std::uint8_t>(i >> 8), digest[2] = static_cast<std::uint8_t>(i);
        try {
          c.sign_digest("firma-ec", digest);
          ++signed_ok;
        } catch (const std::exception&) {
          ++failed;
        }
      }
    });
  for (auto& th : threads) th.join();
  ASSERT_EQ(signed_ok.load(), kThreads * kEach) << failed.load() << " failed";
  // Every record is written by the time firmad stops; each digest once.
  EXPECT_EQ(daemon_->terminate(), 0);
  const std::string audit = read_file(rig_->audit_log());
  std::set<std::string> digests;
  long lines = 0;
  for (std::size_t at = 0; (at = audit.find(" event=sign ", at)) != std::string::npos; ++at) {
    const std::size_t eol = audit.find('\n', at);
    const std::string line = audit.substr(at, eol - at);
    if (line.find("result=ok") == std::string::npos || line.find("uid=0 ") == std::string::npos) continue;
    ++lines;
    const std::size_t d = line.find("digest=");
    if (d != std::string::npos) digests.insert(line.substr(d + 7, 64));
  }
  EXPECT_EQ(lines, kThreads * kEach);
  EXPECT_EQ(digests.size(), static_cast<std::size_t>(kThreads * kEach));
}

TEST_F(FairShareSuite, StalledAuditFileMakesSignaturesWaitThenFailWhileStatusAnswers) {
  rig_ = std::make_unique<TokenRig>();
  const fs::path fifo = rig_->dir() / "audit.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A reader that reads nothing yet: firmad's writes stop once the pipe is full.
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  daemon_ = std::make_unique<Daemon>(
      rig_->write_config({{"audit_file", "audit_file = \"" + fifo.string() + "\"\naudit_queue = 16\naudit_wait_ms = 3000"}}),
      rig_->socket());
  ASSERT_TRUE(daemon_->wait_for_log("event=token-login")) << daemon_->log();

  auto c = client();
  const firma::Bytes digest(32, 7);
  long before_stall = 0;
  std::string failure;
  for (int i = 0; i < 5000 && failure.empty(); ++i) {
    try {
      c.sign_digest("firma-ec", digest);
      ++before_stall;
    } catch (const firma::Error& e) {
      failure = e.name();
    }
  }
  EXPECT_EQ(failure, "io.firmad.Signer.AuditUnavailable") << before_stall << " signed";
  ASSERT_GT(before_stall, 16);

  // While a signature waits for the audit trail, Status answers.
  auto waiting = std::async(std::launch::async, [&] {
    try {
      client().sign_digest("firma-ec", digest);
      return std::string("signed");
    } catch (const firma::Error& e) {
      return e.name();
    }
  });
  // Status (an administrator's) shows the call waiting for a place, and answers meanwhile.
  firma::Json status;
  EXPECT_TRUE(eventually([&] {
    status = client().status();
    return status["audit"]["waiting"].get<long>() >= 1;
  })) << status.dump();
  EXPECT_TRUE(status["tokens"][0]["loggedIn"].get<bool>());
  EXPECT_EQ(status["audit"]["queued"].get<long>(), 16) << "the queue is full";
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "Status answered while the signature still waits";
  EXPECT_EQ(waiting.get(), "io.firmad.Signer.AuditUnavailable");

  // The file drains: every signature that was made has its record, and signing works again.
  std::string records;
  std::atomic<bool> stop{false};
  std::thread drain([&] {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(reader, buf, sizeof buf);
      if (n > 0) records.append(buf, static_cast<std::size_t>(n));
      else if (n == 0 && stop) break;  // EOF: firmad has stopped and closed its end
      else std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a non-blocking pipe
    }
  });
  bool signs_again = eventually([&] {
    try {
      client().sign_digest("firma-ec", digest);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }, std::chrono::seconds(10));
  EXPECT_TRUE(signs_again);
  EXPECT_EQ(daemon_->terminate(), 0);  // writes what is queued, into the pipe we drain
  stop = true;
  drain.join();
  ::close(reader);
  long ok = 0;
  for (std::size_t at = 0; (at = records.find("result=ok", at)) != std::string::npos; ++at) ++ok;
  EXPECT_EQ(ok, before_stall + 1) << "one record per signature made, none for those refused";
}

TEST_F(FairShareSuite, BufferedBytesStayUnderTheCeilingWithEveryConnectionStreamingJunk) {
  // The default limits: 128 connections, 16 a uid, 24 MiB buffered, 8 MiB a
  // uid. Seven uids take 112 connections; the rest are for this test's client.
  start_open();
  const pid_t pid = daemon_->pid();
  {
    std::ofstream reset("/proc/" + std::to_string(pid) + "/clear_refs");
    reset << "5";  // VmHWM starts again from VmRSS
  }
  std::string all;
  for (int u = 0; u < 7; ++u)
    all += setpriv(kAbuser - u) + " --kind endless --count 16 --seconds 4 & ";
  std::atomic<bool> done{false};
  std::atomic<long> max_buffered{0}, samples{0};
  std::thread sampler([&] {
    while (!done) {
      try {
        long sum = 0;
        const firma::Json status = client().status();
        for (const auto& p : status["heldBack"]) sum += p["bufferedBytes"].get<long>();
        max_buffered = std::max(max_buffered.load(), sum);
        ++samples;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // sampling period
    }
  });
  const auto r = run(all + "wait", 60);
  done = true;
  sampler.join();
  long violations = 0, streamed = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    const auto j = firma::Json::parse(line);
    violations += j.value("protocol_violation", 0L) + j.value("buffers_full", 0L);
    EXPECT_EQ(j.value("other_errors", -1L), 0) << line;
    streamed += j.value("bytes_sent", 0L);
  }
  EXPECT_GT(violations, 8) << r.out;
  const long hwm = load::proc_status_kib(pid, "VmHWM");
  EXPECT_LE(hwm, 64 * 1024) << "KiB; streamed " << streamed << " bytes";
  EXPECT_GT(samples.load(), 10);
  EXPECT_LE(max_buffered.load(), 24L << 20);
  EXPECT_GT(max_buffered.load(), 8L << 20) << "the streams pressed on the ceiling";
  std::cout << "[          ] VmHWM " << hwm << " KiB, buffered at most " << max_buffered.load() << " bytes, "
            << violations << " oversize messages refused, " << streamed / 1000000 << " MB streamed\n";
  expect_daemon_still_signs();
}

// The audit trail's file: moved by logrotate, then reopened; unwritable at start.
using AuditTrail = FairShareSuite;

TEST_F(AuditTrail, FileMovedByLogrotateIsReopenedAndNoRecordIsLost) {
  start_open();
  auto c = client();
  auto sign = [&](int i) {
    firma::Bytes digest(32, 0x11);
    digest[0] = static_cast<std::uint8_t>(i);
    c.sign_digest("firma-ec", digest);
  };
  for (int i = 0; i < 50; ++i) sign(i);
  // The first 50 records are in the file before logrotate moves it.
  ASSERT_TRUE(eventually([&] { return audit_lines({"result=ok"}) == 50; }));
  const fs::path moved = rig_->audit_log().string() + ".1";
  fs::rename(rig_->audit_log(), moved);  // what logrotate does first
  for (int i = 50; i < 100; ++i) sign(i);  // into the moved file until firmad notices
  ASSERT_EQ(::kill(daemon_->pid(), SIGHUP), 0);  // logrotate's postrotate
  EXPECT_TRUE(eventually([&] { return fs::exists(rig_->audit_log()); })) << daemon_->log();
  EXPECT_TRUE(daemon_->wait_for_log("event=audit-reopened")) << daemon_->log();
  for (int i = 100; i < 150; ++i) sign(i);
  EXPECT_EQ(daemon_->terminate(), 0);
  auto ok = [](const std::string& text) {
    long n = 0;
    for (std::size_t at = 0; (at = text.find("result=ok", at)) != std::string::npos; ++at) ++n;
    return n;
  };
  const long before = ok(read_file(moved)), after = ok(read_file(rig_->audit_log()));
  EXPECT_EQ(before + after, 150) << before << " in the moved file, " << after << " in the new one";
  EXPECT_GE(before, 50) << "what was written before the move stays there";
  EXPECT_GE(after, 50) << "what was signed after SIGHUP is in the new file";
}

TEST_F(AuditTrail, UnwritableAuditFileStopsTheStartNamingThePath) {
  rig_ = std::make_unique<TokenRig>();
  const std::string where = "/proc/firmad-no-such-dir/audit.log";
  try {
    daemon_ = std::make_unique<Daemon>(
        rig_->write_config({{"audit_file", "audit_file = \"" + where + "\""}}), rig_->socket());
    ADD_FAILURE() << "firmad started without its audit trail";
  } catch (const std::exception& e) {
    const std::string said = e.what();
    EXPECT_NE(said.find("audit"), std::string::npos) << said;
    EXPECT_NE(said.find("/proc/firmad-no-such-dir"), std::string::npos) << said;
  }
}

// The I/O thread (firmad's main thread) never waits on the disk: traced by
// strace while it serves every kind of call that writes something.
using IoThread = FairShareSuite;

TEST_F(IoThread, NeverFsyncsNorWritesToAFile) {
  rig_ = std::make_unique<TokenRig>();
  const fs::path trace = rig_->dir() / "strace.out";
  Daemon::Options o;
  // Every call that writes to a file descriptor (sockets included, so the I/O
  // thread's replies show up too).
  o.launcher = {"/usr/bin/strace", "-f", "-qq", "-yy", "--seccomp-bpf", "-e",
                "trace=write,writev,pwrite64,pwritev,sendmsg,sendto,fsync,fdatasync,sync_file_range", "-o",
                trace.string()};
  // LeakSanitizer cannot run under ptrace (it exits with ASan's exit code at
  // the end); the ASan build's traced firmad runs without it.
  if (const char* asan = std::getenv("ASAN_OPTIONS"))
    o.launcher.insert(o.launcher.begin() + 1, {"-E", std::string("ASAN_OPTIONS=") + asan + ":detect_leaks=0"});
  daemon_ = std::make_unique<Daemon>(rig_->config(), rig_->socket(), o);
  ASSERT_TRUE(eventually([&] {
    try {
      return client().status()["tokens"][0]["loggedIn"].get<bool>();
    } catch (const std::exception&) {
      return false;
    }
  }, std::chrono::seconds(20))) << daemon_->log();
  const pid_t io_thread = daemon_->daemon_pid();
  ASSERT_GT(io_thread, 0);

  auto c = client();
  for (int i = 0; i < 20; ++i) c.sign_digest("firma-ec", firma::Bytes(32, static_cast<std::uint8_t>(i)));  // audit
  c.call("io.firmad.Signer.TrackRequest", {{"key", "empresa"}, {"submitted", "2026-11-30"}});           // state.json
  c.call("io.firmad.Signer.Cancel", {{"key", "firma-p384"}, {"reason", "io thread test"}});              // state.json
  c.call("io.firmad.Signer.Logout", {{"token", "demo"}});                                               // log lines
  ::kill(io_thread, SIGTERM);  // firmad, not strace
  EXPECT_EQ(daemon_->terminate(), 0);

  // The main thread is the I/O thread from the first call served (the first
  // audit record written) to SIGTERM; before, it starts the tokens (SoftHSM
  // writes its files then), after, it stops them.
  const std::string all = read_file(trace);
  const std::size_t serving = all.rfind('\n', all.find("audit.log>")), stopping = all.find("--- SIGTERM");
  ASSERT_NE(serving, std::string::npos) << all;
  ASSERT_NE(stopping, std::string::npos) << all;
  const std::string text = all.substr(serving + 1, stopping - serving - 1);
  long io_lines = 0, other_fsyncs = 0, other_audit_writes = 0;
  const std::string mine = std::to_string(io_thread) + " ";
  for (std::size_t at = 0, eol; at < text.size(); at = eol + 1) {
    eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(at, eol - at);
    const bool fsync = line.find("fsync(") != std::string::npos || line.find("fdatasync(") != std::string::npos ||
                       line.find("sync_file_range(") != std::string::npos;
    if (line.rfind(mine, 0) != 0) {
      other_fsyncs += fsync;
      other_audit_writes += line.find("audit.log>") != std::string::npos;
      continue;
    }
    ++io_lines;
    EXPECT_FALSE(fsync) << "the I/O thread waits on the disk: " << line;
    // -yy names each fd: a socket is "<UNIX:[...]>", an eventfd "<anon_inode:[eventfd]>";
    // a file, the log on stderr among them, is "</path>".
    const auto paren = line.find('(');
    const auto fd_name = paren == std::string::npos ? std::string::npos : line.find('<', paren);
    EXPECT_FALSE(fd_name != std::string::npos && fd_name + 1 < line.size() && line[fd_name + 1] == '/')
        << "the I/O thread writes to a file: " << line;
  }
  // The trace saw the work done elsewhere: state.json synced, the audit file written.
  EXPECT_GE(other_fsyncs, 4) << "TrackRequest and Cancel each sync state.json twice";
  EXPECT_GT(other_audit_writes, 0);
  EXPECT_GT(io_lines, 0) << "the I/O thread's replies were traced";
}

}  // namespace
}  // namespace firmad::test
