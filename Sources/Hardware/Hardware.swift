// The Hardware layer is two targets in this folder (Package.swift says why): this one holds
// the architectures whose tables need no optimization in debug builds, and re-exports the
// shared parts and SNP, so every layer above imports only `Hardware`.
@_exported import HardwareCore
