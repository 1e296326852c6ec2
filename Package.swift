// swift-tools-version:6.1
import PackageDescription

// Layers, each its own target (see README "Design"):
//   MeshModel    pure value types: ports, CIDRs, marks, owners, tables, chains, rules (the IR)
//   MeshConfig   Istio flags + env → typed CaptureConfig (strict, parse once)
//   MeshPlanner  CaptureConfig → Plan (pure)
//   MeshRender   Plan → iptables-restore text, nft script, JSON (pure)
//   MeshIptables the iptables-restore applier: live state (iptables-save) → converging restore
//   MeshSystem   the only place that asks the system (passwd/group, interfaces, files, exec)
//   CMeshShims   two GNU libc calls Swift cannot see without _GNU_SOURCE (setns, pipe2)
//   CNftnl       system library: libnftnl + libmnl headers
//   MeshNetlink  safe Swift layer over CNftnl: plan → netlink batch, send, dump
//   meshinit     thin CLI on swift-argument-parser
let package = Package(
    name: "meshinit",
    products: [
        .executable(name: "meshinit", targets: ["meshinit"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        .target(name: "MeshModel"),
        .target(name: "MeshConfig", dependencies: ["MeshModel"]),
        .target(name: "MeshPlanner", dependencies: ["MeshModel", "MeshConfig"]),
        .target(name: "MeshRender", dependencies: ["MeshModel"]),
        .target(name: "CMeshShims"),
        .target(name: "CRtnetlink"),
        .target(name: "MeshSystem", dependencies: ["MeshModel", "MeshConfig", "CMeshShims", "CRtnetlink"]),
        .target(name: "MeshIptables", dependencies: ["MeshModel", "MeshConfig", "MeshRender", "MeshSystem"]),
        .systemLibrary(
            name: "CNftnl",
            path: "Sources/CNftnl",
            pkgConfig: "libnftnl libmnl",
            providers: [.apt(["libnftnl-dev", "libmnl-dev"])]
        ),
        .target(name: "MeshNetlink", dependencies: ["CNftnl", "MeshModel", "MeshRender", "MeshSystem"]),
        .executableTarget(
            name: "meshinit",
            dependencies: [
                "MeshModel", "MeshConfig", "MeshPlanner", "MeshRender", "MeshSystem", "MeshIptables", "MeshNetlink",
                "CMeshShims", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Real-kernel test helpers shared by the test targets (not shipped).
        .target(name: "MeshTestKit", path: "Tests/MeshTestKit"),
        .testTarget(name: "MeshModelTests", dependencies: ["MeshModel"]),
        .testTarget(name: "MeshSystemTests", dependencies: ["MeshSystem", "MeshModel", "CRtnetlink"]),
        .testTarget(
            name: "MeshCLITests",
            dependencies: [
                "meshinit", "MeshConfig",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "MeshIptablesTests",
            dependencies: [
                "MeshIptables", "MeshPlanner", "MeshConfig", "MeshModel", "MeshRender", "MeshSystem", "MeshTestKit",
            ]
        ),
        .testTarget(
            name: "MeshNetlinkTests",
            dependencies: ["MeshNetlink", "MeshPlanner", "MeshConfig", "MeshModel", "MeshRender", "MeshTestKit"]
        ),
        .testTarget(
            name: "MeshConfigTests",
            dependencies: [
                "MeshConfig", "MeshModel",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(name: "MeshPlannerTests", dependencies: ["MeshPlanner", "MeshConfig", "MeshModel"]),
        .testTarget(
            name: "MeshRenderTests",
            dependencies: [
                "MeshRender", "MeshPlanner", "MeshConfig", "MeshModel", "MeshTestKit",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            exclude: ["Goldens"]
        ),
    ]
)
