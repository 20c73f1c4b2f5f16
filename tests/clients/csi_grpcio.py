#!/usr/bin/env python3
"""Calls every RPC of proto/csi.proto once on a CSI socket with Python grpcio (grpc-core),
with the channel's default options, so its :authority is the percent-encoded socket path.

    csi_grpcio.py PROTO_DIR SOCKET WORK_DIR

The stubs are compiled from PROTO_DIR/csi.proto into WORK_DIR at run time. A mount volume
goes through its whole life (create, stage, publish, stats, expand, unpublish, unstage,
delete) with paths under WORK_DIR; every other RPC gets an empty request. One JSON line per
call on stdout: {"rpc": "csi.v1.Service/Method", "code": "OK", "message": ..., "response": {...}}.
The caller judges the codes; this script fails only if it cannot run at all.
"""

import json
import os
import sys


def compile_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main([
        "protoc",
        f"-I{proto_dir}",
        f"-I{includes}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "csi.proto"),
    ])
    if status != 0:
        sys.exit(f"grpc_tools.protoc failed on {proto_dir}/csi.proto ({status})")
    sys.path.insert(0, out_dir)


def main():
    proto_dir, socket, work = sys.argv[1:4]
    stubs = os.path.join(work, "stubs")
    os.makedirs(stubs, exist_ok=True)
    compile_stubs(proto_dir, stubs)

    import grpc
    from google.protobuf.json_format import MessageToDict
    import csi_pb2 as pb
    import csi_pb2_grpc as rpc

    channel = grpc.insecure_channel(f"unix://{socket}")
    called = []

    def call(service, method, request, stream=False):
        stub = getattr(rpc, f"{service}Stub")(channel)
        line = {"rpc": f"csi.v1.{service}/{method}"}
        try:
            if stream:
                responses = list(getattr(stub, method)(request, timeout=60))
                line["response"] = [MessageToDict(r) for r in responses]
            else:
                response = getattr(stub, method)(request, timeout=60)
                line["response"] = MessageToDict(response)
            line["code"] = "OK"
        except grpc.RpcError as e:
            line["code"] = e.code().name
            line["message"] = e.details()
        called.append(line["rpc"])
        print(json.dumps(line), flush=True)

    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(),
        access_mode=pb.VolumeCapability.AccessMode(
            mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
        ),
    )
    name = "grpcio-volume"
    staging = os.path.join(work, "staging")
    target = os.path.join(work, "target")
    os.makedirs(staging, exist_ok=True)
    mib = 1 << 20

    call("Identity", "GetPluginInfo", pb.GetPluginInfoRequest())
    call("Identity", "GetPluginCapabilities", pb.GetPluginCapabilitiesRequest())
    call("Identity", "Probe", pb.ProbeRequest())

    call("Controller", "ControllerGetCapabilities", pb.ControllerGetCapabilitiesRequest())
    call("Controller", "GetCapacity", pb.GetCapacityRequest(volume_capabilities=[cap]))
    call("Controller", "CreateVolume", pb.CreateVolumeRequest(
        name=name,
        capacity_range=pb.CapacityRange(required_bytes=64 * mib),
        volume_capabilities=[cap],
    ))
    call("Controller", "ValidateVolumeCapabilities", pb.ValidateVolumeCapabilitiesRequest(
        volume_id=name, volume_capabilities=[cap]))
    call("Controller", "ListVolumes", pb.ListVolumesRequest())
    call("Controller", "ControllerGetVolume", pb.ControllerGetVolumeRequest(volume_id=name))
    call("Controller", "ControllerExpandVolume", pb.ControllerExpandVolumeRequest(
        volume_id=name, capacity_range=pb.CapacityRange(required_bytes=96 * mib),
        volume_capability=cap))

    call("Node", "NodeGetInfo", pb.NodeGetInfoRequest())
    call("Node", "NodeGetCapabilities", pb.NodeGetCapabilitiesRequest())
    call("Node", "NodeStageVolume", pb.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging, volume_capability=cap))
    call("Node", "NodePublishVolume", pb.NodePublishVolumeRequest(
        volume_id=name, staging_target_path=staging, target_path=target,
        volume_capability=cap))
    call("Node", "NodeGetVolumeStats", pb.NodeGetVolumeStatsRequest(
        volume_id=name, volume_path=target))
    call("Node", "NodeExpandVolume", pb.NodeExpandVolumeRequest(
        volume_id=name, volume_path=target,
        capacity_range=pb.CapacityRange(required_bytes=128 * mib),
        volume_capability=cap))
    call("Node", "NodeUnpublishVolume", pb.NodeUnpublishVolumeRequest(
        volume_id=name, target_path=target))
    call("Node", "NodeUnstageVolume", pb.NodeUnstageVolumeRequest(
        volume_id=name, staging_target_path=staging))
    call("Controller", "DeleteVolume", pb.DeleteVolumeRequest(volume_id=name))

    # Every other RPC of the proto, with an empty request: berth answers each with a gRPC
    # status of its own (UNIMPLEMENTED for what it does not offer).
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            full = f"csi.v1.{service.name}/{method.name}"
            if full in called:
                continue
            request = getattr(pb, method.input_type.name)()
            call(service.name, method.name, request, stream=method.server_streaming)


if __name__ == "__main__":
    main()
