// The token room's units that need a real module: the session pool (open,
// reopen, close, forget) on SoftHSM, and the module lifecycle (initialise,
// re-initialise once every user has let go) on the fault module.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "daemon/token/session_pool.hpp"
#include "pkcs11/error.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/uri.hpp"
#include "rig.hpp"

namespace firmad::test {
namespace {

class SessionPoolOnAToken : public ::testing::Test {
 protected:
  TokenRig rig;
  std::shared_ptr<pkcs11::Module> module = pkcs11::Module::shared(TokenRig::kModule);
  pkcs11::SlotId slot = find_slot();

  pkcs11::SlotId find_slot() {
    const auto uri = pkcs11::Uri::parse("pkcs11:token=firmad-demo");
    for (auto s : module->slots_with_token())
      if (uri.matches_token(*module, s)) return s;
    throw std::runtime_error("token not found");
  }
  // Whether the module still holds a session with this handle.
  bool open_in_module(CK_SESSION_HANDLE h) {
    CK_SESSION_INFO info{};
    return module->fn()->C_GetSessionInfo(h, &info) == CKR_OK;
  }
};

TEST_F(SessionPoolOnAToken, OpensEverySlotAndClosesWhatItDrops) {
  SessionPool pool(3);
  EXPECT_EQ(pool.at(0), nullptr) << "a new pool holds no session";
  pool.replace_all(pool.open_all(module, slot));
  std::set<CK_SESSION_HANDLE> handles;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    ASSERT_NE(pool.at(i), nullptr);
    handles.insert(pool.at(i)->handle());
  }
  EXPECT_EQ(handles.size(), 3u) << "one session per slot";
  const CK_SESSION_HANDLE closed = pool.at(0)->handle();
  pool.drop(0, SessionPool::Handles::Close);
  EXPECT_EQ(pool.at(0), nullptr);
  EXPECT_FALSE(open_in_module(closed)) << "a dropped session is closed";
  // Reopened: a session of its own again.
  pool.reopen(0, std::make_unique<pkcs11::Session>(module, slot));
  ASSERT_NE(pool.at(0), nullptr);
  EXPECT_TRUE(open_in_module(pool.at(0)->handle()));
  // Opening anew closes the old ones as the new ones take their place.
  const CK_SESSION_HANDLE old = pool.at(1)->handle();
  pool.replace_all(pool.open_all(module, slot));
  EXPECT_FALSE(open_in_module(old));
  pool.drop_all(SessionPool::Handles::Close);
  for (std::size_t i = 0; i < pool.size(); ++i) EXPECT_EQ(pool.at(i), nullptr);
}

// A forgotten session's handle is never passed to C_CloseSession: the module
// declared it gone and may have given the number to someone else.
TEST_F(SessionPoolOnAToken, ForgetsWithoutClosing) {
  SessionPool pool(2);
  pool.replace_all(pool.open_all(module, slot));
  const CK_SESSION_HANDLE forgotten = pool.at(1)->handle();
  pool.drop(1, SessionPool::Handles::Forget);
  EXPECT_EQ(pool.at(1), nullptr);
  EXPECT_TRUE(open_in_module(forgotten)) << "forgetting a handle does not close it";
  const CK_SESSION_HANDLE kept = pool.at(0)->handle();
  pool.drop_all(SessionPool::Handles::Forget);
  EXPECT_TRUE(open_in_module(kept));
  module->close_all_sessions(slot);  // how the worker ends what it forgot
  EXPECT_FALSE(open_in_module(forgotten));
  EXPECT_FALSE(open_in_module(kept));
}

TEST_F(SessionPoolOnAToken, OpeningOnASlotWithoutATokenChangesNothing) {
  SessionPool pool(2);
  pool.replace_all(pool.open_all(module, slot));
  const CK_SESSION_HANDLE before = pool.at(0)->handle();
  EXPECT_THROW(pool.open_all(module, 0xdead), pkcs11::Error);
  ASSERT_NE(pool.at(0), nullptr);
  EXPECT_EQ(pool.at(0)->handle(), before);
  EXPECT_TRUE(open_in_module(before));
}

// The module lifecycle: every user that sees the backend lost forgets its
// sessions and parks; the last to park re-initialises (C_Finalize +
// C_Initialize, counted by the fault module), and the others go on once the
// generation changed. A user that leaves while parked does not hold it up.
TEST(ModuleLifecycle, TheLastUserToParkReinitialisesOnce) {
  TokenRig rig;
  const fs::path control = rig.dir() / "fault";
  write_file(control, "");
  ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  const auto inits = [&] {
    const std::string n = read_file(control.string() + ".inits");
    return n.empty() ? 0L : std::stol(n);
  };
  {
    auto module = pkcs11::Module::shared(FIRMAD_FAULT_MODULE);
    const long at_start = inits();
    EXPECT_GE(at_start, 1);
    module->join();
    module->join();
    module->join();
    EXPECT_EQ(module->park().outcome, pkcs11::Module::Parking::Outcome::NotPending) << "nothing to wait for";
    const auto generation = module->generation();
    module->request_reinit();
    EXPECT_TRUE(module->reinit_pending());
    const auto first = module->park();
    EXPECT_EQ(first.outcome, pkcs11::Module::Parking::Outcome::Parked);
    EXPECT_EQ(first.generation, generation);
    EXPECT_EQ(inits(), at_start) << "not while another user may still call into the module";
    module->leave(first.generation);  // the third user stops while parked: it no longer counts
    EXPECT_EQ(inits(), at_start);
    const auto last = module->park();
    EXPECT_EQ(last.outcome, pkcs11::Module::Parking::Outcome::Parked) << "one user has not parked yet";
    const auto third = module->park();
    EXPECT_EQ(third.outcome, pkcs11::Module::Parking::Outcome::Reinitialised);
    EXPECT_EQ(third.initialize_result, static_cast<unsigned long>(CKR_OK));
    EXPECT_EQ(inits(), at_start + 1) << "exactly one C_Initialize";
    EXPECT_NE(module->generation(), generation) << "the parked users go on";
    EXPECT_FALSE(module->reinit_pending());
    EXPECT_FALSE(module->slots_with_token().empty()) << "the module serves again";
    module->leave();
    module->leave();
  }
  ::unsetenv("FIRMAD_FAULT_CONTROL");
}

}  // namespace
}  // namespace firmad::test
