// The token room's pure units: the key registry and the login state machine of a snapshot.
#include <gtest/gtest.h>

#include "daemon/token/key_registry.hpp"
#include "daemon/token/snapshot.hpp"

namespace firmad {
namespace {

using protocol::LoginState;

KeyConfig key(const std::string& alias, const std::string& uri, bool pin_per_signature = false) {
  KeyConfig k;
  k.alias = alias, k.token = "demo", k.uri = uri, k.pin_per_signature = pin_per_signature;
  return k;
}

TEST(KeyRegistry, KeepsKeysInOrderWithTheirParsedUris) {
  KeyRegistry r({key("a", "pkcs11:object=a;id=%01"), key("b", "pkcs11:object=b")});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r.config(0).alias, "a");
  EXPECT_EQ(r.uri(0).object_id(), std::optional<pkcs11::Bytes>(pkcs11::Bytes{0x01}));
  EXPECT_EQ(r.uri(1).object_label(), std::optional<std::string>("b"));
  EXPECT_FALSE(r.wants_signature_pin());
  r.add(key("c", "pkcs11:object=c", true));
  EXPECT_EQ(r.size(), 3u);
  EXPECT_TRUE(r.wants_signature_pin());
}

TEST(KeyRegistry, RefusesABadUriOrATakenAliasAndChangesNothing) {
  EXPECT_THROW(KeyRegistry({key("a", "not a uri")}), std::invalid_argument);
  KeyRegistry r({key("a", "pkcs11:object=a")});
  EXPECT_THROW(r.add(key("a", "pkcs11:object=other")), std::invalid_argument);
  EXPECT_THROW(r.add(key("b", "pkcs11:%zz")), std::invalid_argument);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_THROW(r.set_uri("a", "pkcs11:%zz"), std::invalid_argument);
  EXPECT_EQ(r.config(0).uri, "pkcs11:object=a") << "a bad URI leaves the old one";
}

TEST(KeyRegistry, SetUriServesTheNewObjects) {
  KeyRegistry r({key("a", "pkcs11:object=a;id=%01")});
  EXPECT_TRUE(r.set_uri("a", "pkcs11:id=%02"));
  EXPECT_EQ(r.config(0).uri, "pkcs11:id=%02");
  EXPECT_EQ(r.uri(0).object_id(), std::optional<pkcs11::Bytes>(pkcs11::Bytes{0x02}));
  EXPECT_FALSE(r.set_uri("nobody", "pkcs11:id=%03"));
}

TEST(KeyRegistry, TellsAFirstSeenKeyFromTheSameAndFromAnother) {
  KeyRegistry r({key("a", "pkcs11:object=a")});
  const pkcs11::Bytes one{1, 2, 3}, two{4, 5, 6};
  EXPECT_EQ(r.compare("a", one), KeyRegistry::Seen::First);
  r.remember("a", one);
  EXPECT_EQ(r.compare("a", one), KeyRegistry::Seen::Same);
  EXPECT_EQ(r.compare("a", two), KeyRegistry::Seen::Other);
  // firmad removed the key's objects: what comes under the alias next is new.
  r.forget("a");
  EXPECT_EQ(r.compare("a", two), KeyRegistry::Seen::First);
}

// Whatever happened last, the fields agree with each other.
void consistent(const TokenSnapshot& s) {
  EXPECT_EQ(s.logged_in, s.login_state == LoginState::LoggedIn) << wire_name(s.login_state);
  if (s.logged_in) EXPECT_TRUE(s.present);
  if (s.login_state == LoginState::Absent) EXPECT_FALSE(s.present);
  if (s.login_state != LoginState::LoggedIn && s.login_state != LoginState::LoggedOut) EXPECT_FALSE(s.reason.empty());
}

TEST(LoginStates, EveryTransitionLeavesAConsistentState) {
  TokenSnapshot s;
  consistent(s);
  EXPECT_EQ(s.login_state, LoginState::Absent);
  s.found("waiting for 'firmactl login demo'");
  consistent(s);
  EXPECT_TRUE(s.present);
  EXPECT_EQ(s.login_state, LoginState::LoggedOut);
  s.logged_in_now();
  consistent(s);
  EXPECT_TRUE(s.reason.empty());
  s.failing("the token does not answer (CKR_FUNCTION_FAILED)");
  consistent(s);
  EXPECT_TRUE(s.present) << "a token that does not answer is still in its slot";
  EXPECT_EQ(s.login_state, LoginState::Error);
  s.logged_in_now();
  s.logged_out("the token logged firmad out");
  consistent(s);
  EXPECT_EQ(s.login_state, LoginState::LoggedOut);
  for (auto state : {LoginState::PinIncorrect, LoginState::PinFinalTry, LoginState::PinLocked, LoginState::PinSourceUnavailable,
                     LoginState::Error}) {
    s.login_failed(state, "refused");
    consistent(s);
    EXPECT_EQ(s.login_state, state);
  }
  s.login_failed(LoginState::LoggedIn, "nonsense");
  consistent(s);
  EXPECT_EQ(s.login_state, LoginState::Error) << "a failed login never claims one";
  s.logged_in_now();
  s.absent("the token went away");
  consistent(s);
  EXPECT_FALSE(s.logged_in);
  s.logged_out("logged out by an administrator");
  consistent(s);
  EXPECT_EQ(s.login_state, LoginState::Absent) << "a logout does not bring an absent token back";
}

TEST(LoginStates, ARefusedTokenShowsNoKeys) {
  TokenSnapshot s;
  s.keys.push_back(KeyState{key("a", "pkcs11:object=a"), pkcs11::KeyInfo{}, std::nullopt});
  s.found("");
  s.logged_in_now();
  s.mark_refused("another serial");
  consistent(s);
  EXPECT_FALSE(s.present);
  EXPECT_FALSE(s.keys[0].info);
  EXPECT_EQ(s.reason, "another serial");
}

}  // namespace
}  // namespace firmad
