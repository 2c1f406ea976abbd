// Package guest is the guest agent's wire protocol (guest.proto), with the
// Go code protoc generates from it. It is wire-compatible with hypeman's
// guest agent. Regenerate with `make generate`; never edit the *.pb.go files.
package guest

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative guest.proto
