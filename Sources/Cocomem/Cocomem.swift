// The library's front door: one import for a program that embeds the model, e.g. as an
// oracle in its own tests (README, "Using the model as a library").
@_exported import GuestKernel
@_exported import Hardware
@_exported import HostKernel
@_exported import Hypervisor
@_exported import PageTables
@_exported import Reports
@_exported import Simulation
