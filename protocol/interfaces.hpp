// The Varlink interface descriptions firmad serves, built from the .varlink files.
#pragma once
#include <optional>
#include <string_view>
#include <vector>

namespace firmad::protocol {

inline constexpr std::string_view kSignerInterface = "io.firmad.Signer";
inline constexpr std::string_view kServiceInterface = "org.varlink.service";

// Returns the names of every interface firmad implements.
std::vector<std::string_view> interface_names();

// Returns the description text of an interface, or nullopt if unknown.
std::optional<std::string_view> interface_description(std::string_view name);

}  // namespace firmad::protocol
