// Package health is vigil's health logic as pure code: the instance and policy
// types with their JSON shapes, normalization and validation, and the status
// state machine (transitions, start-period grace, lifecycle masking, fresh
// windows, the bounded last error and the history ring).
//
// Concurrency contract: nothing here reads the clock, does I/O, starts
// goroutines or holds locks. Time arrives as a field of each call. A State is a
// plain value owned by one caller (in vigil, one instance actor); copy it to
// share it. The hot path (State.Observe) allocates nothing.
//
// This package imports only the standard library.
package health
