/// The include files a guest source can `#include` (`harness.inc`, `vmm.inc`): copies of
/// `guest/include/*.inc` embedded by `scripts/build-guest.sh`, so an installed `vmm-harness`
/// needs no source tree to assemble a user's `.S`.
public enum GuestIncludes {}
