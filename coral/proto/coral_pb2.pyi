from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Error(_message.Message):
    __slots__ = ("code", "message", "suggestions")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., suggestions: _Optional[_Iterable[str]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("client_label",)
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    client_label: str
    def __init__(self, client_label: _Optional[str] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("daemon", "version", "pid", "agent_id", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DAEMON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    daemon: str
    version: str
    pid: int
    agent_id: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, daemon: _Optional[str] = ..., version: _Optional[str] = ..., pid: _Optional[int] = ..., agent_id: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ServiceInstance(_message.Message):
    __slots__ = ("service", "pid", "executable", "kind", "agent_id", "registered_unix_ns", "sdk_version", "runtime")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    service: str
    pid: int
    executable: str
    kind: str
    agent_id: str
    registered_unix_ns: int
    sdk_version: str
    runtime: str
    def __init__(self, service: _Optional[str] = ..., pid: _Optional[int] = ..., executable: _Optional[str] = ..., kind: _Optional[str] = ..., agent_id: _Optional[str] = ..., registered_unix_ns: _Optional[int] = ..., sdk_version: _Optional[str] = ..., runtime: _Optional[str] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("agent_id", "hostname", "services", "version", "heartbeat_interval_ms")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    services: _containers.RepeatedCompositeFieldContainer[ServiceInstance]
    version: str
    heartbeat_interval_ms: int
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServiceInstance, _Mapping]]] = ..., version: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class ServicesChanged(_message.Message):
    __slots__ = ("added", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedCompositeFieldContainer[ServiceInstance]
    removed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, added: _Optional[_Iterable[_Union[ServiceInstance, _Mapping]]] = ..., removed: _Optional[_Iterable[int]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("after", "client_label")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    after: str
    client_label: str
    def __init__(self, after: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "next")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInstance]
    next: str
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceInstance, _Mapping]]] = ..., next: _Optional[str] = ...) -> None: ...

class RegisterProcessRequest(_message.Message):
    __slots__ = ("service", "pid", "executable", "address", "kind", "sdk_version", "runtime", "python_layout")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PYTHON_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    service: str
    pid: int
    executable: str
    address: str
    kind: str
    sdk_version: str
    runtime: str
    python_layout: PythonLayout
    def __init__(self, service: _Optional[str] = ..., pid: _Optional[int] = ..., executable: _Optional[str] = ..., address: _Optional[str] = ..., kind: _Optional[str] = ..., sdk_version: _Optional[str] = ..., runtime: _Optional[str] = ..., python_layout: _Optional[_Union[PythonLayout, _Mapping]] = ...) -> None: ...

class PythonLayout(_message.Message):
    __slots__ = ("version_hex", "interpreter", "threads_head", "tstate_next", "tstate_native_thread_id", "tstate_frame", "cframe_current_frame", "via_cframe", "frame_code", "frame_previous", "frame_instr", "frame_owner", "owner_cstack", "code_qualname", "code_filename", "code_firstlineno", "code_linetable", "code_adaptive", "bytes_size", "bytes_data", "unicode_length", "unicode_state", "unicode_ascii_data", "unicode_compact_data")
    VERSION_HEX_FIELD_NUMBER: _ClassVar[int]
    INTERPRETER_FIELD_NUMBER: _ClassVar[int]
    THREADS_HEAD_FIELD_NUMBER: _ClassVar[int]
    TSTATE_NEXT_FIELD_NUMBER: _ClassVar[int]
    TSTATE_NATIVE_THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TSTATE_FRAME_FIELD_NUMBER: _ClassVar[int]
    CFRAME_CURRENT_FRAME_FIELD_NUMBER: _ClassVar[int]
    VIA_CFRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_CODE_FIELD_NUMBER: _ClassVar[int]
    FRAME_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INSTR_FIELD_NUMBER: _ClassVar[int]
    FRAME_OWNER_FIELD_NUMBER: _ClassVar[int]
    OWNER_CSTACK_FIELD_NUMBER: _ClassVar[int]
    CODE_QUALNAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FILENAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIRSTLINENO_FIELD_NUMBER: _ClassVar[int]
    CODE_LINETABLE_FIELD_NUMBER: _ClassVar[int]
    CODE_ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    BYTES_SIZE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DATA_FIELD_NUMBER: _ClassVar[int]
    UNICODE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    UNICODE_STATE_FIELD_NUMBER: _ClassVar[int]
    UNICODE_ASCII_DATA_FIELD_NUMBER: _ClassVar[int]
    UNICODE_COMPACT_DATA_FIELD_NUMBER: _ClassVar[int]
    version_hex: int
    interpreter: int
    threads_head: int
    tstate_next: int
    tstate_native_thread_id: int
    tstate_frame: int
    cframe_current_frame: int
    via_cframe: bool
    frame_code: int
    frame_previous: int
    frame_instr: int
    frame_owner: int
    owner_cstack: int
    code_qualname: int
    code_filename: int
    code_firstlineno: int
    code_linetable: int
    code_adaptive: int
    bytes_size: int
    bytes_data: int
    unicode_length: int
    unicode_state: int
    unicode_ascii_data: int
    unicode_compact_data: int
    def __init__(self, version_hex: _Optional[int] = ..., interpreter: _Optional[int] = ..., threads_head: _Optional[int] = ..., tstate_next: _Optional[int] = ..., tstate_native_thread_id: _Optional[int] = ..., tstate_frame: _Optional[int] = ..., cframe_current_frame: _Optional[int] = ..., via_cframe: bool = ..., frame_code: _Optional[int] = ..., frame_previous: _Optional[int] = ..., frame_instr: _Optional[int] = ..., frame_owner: _Optional[int] = ..., owner_cstack: _Optional[int] = ..., code_qualname: _Optional[int] = ..., code_filename: _Optional[int] = ..., code_firstlineno: _Optional[int] = ..., code_linetable: _Optional[int] = ..., code_adaptive: _Optional[int] = ..., bytes_size: _Optional[int] = ..., bytes_data: _Optional[int] = ..., unicode_length: _Optional[int] = ..., unicode_state: _Optional[int] = ..., unicode_ascii_data: _Optional[int] = ..., unicode_compact_data: _Optional[int] = ...) -> None: ...

class RegisterProcessResponse(_message.Message):
    __slots__ = ("registration_id", "heartbeat_interval_ms", "redact_names", "max_message_bytes")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    REDACT_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    heartbeat_interval_ms: int
    redact_names: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    def __init__(self, registration_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., redact_names: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class UnregisterProcessRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class UnregisterProcessResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProcessHeartbeatRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class ProcessHeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: bool = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ("service", "pattern", "max_results", "client_label")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    service: str
    pattern: str
    max_results: int
    client_label: str
    def __init__(self, service: _Optional[str] = ..., pattern: _Optional[str] = ..., max_results: _Optional[int] = ..., client_label: _Optional[str] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("functions", "truncated", "locations")
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    locations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, functions: _Optional[_Iterable[str]] = ..., truncated: bool = ..., locations: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFunctionMetadataRequest(_message.Message):
    __slots__ = ("function",)
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    function: str
    def __init__(self, function: _Optional[str] = ...) -> None: ...

class GetFunctionMetadataResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: FunctionMetadata
    def __init__(self, metadata: _Optional[_Union[FunctionMetadata, _Mapping]] = ...) -> None: ...

class FunctionMetadata(_message.Message):
    __slots__ = ("name", "binary_path", "address", "file_offset", "size", "pid", "source_file", "source_line", "arguments", "return_values", "kind", "semaphore_offset", "inlined_into", "result_in_memory")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BINARY_PATH_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LINE_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_VALUES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEMAPHORE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    INLINED_INTO_FIELD_NUMBER: _ClassVar[int]
    RESULT_IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    binary_path: str
    address: int
    file_offset: int
    size: int
    pid: int
    source_file: str
    source_line: int
    arguments: _containers.RepeatedCompositeFieldContainer[ArgumentMetadata]
    return_values: _containers.RepeatedCompositeFieldContainer[ReturnValueMetadata]
    kind: str
    semaphore_offset: int
    inlined_into: _containers.RepeatedScalarFieldContainer[str]
    result_in_memory: bool
    def __init__(self, name: _Optional[str] = ..., binary_path: _Optional[str] = ..., address: _Optional[int] = ..., file_offset: _Optional[int] = ..., size: _Optional[int] = ..., pid: _Optional[int] = ..., source_file: _Optional[str] = ..., source_line: _Optional[int] = ..., arguments: _Optional[_Iterable[_Union[ArgumentMetadata, _Mapping]]] = ..., return_values: _Optional[_Iterable[_Union[ReturnValueMetadata, _Mapping]]] = ..., kind: _Optional[str] = ..., semaphore_offset: _Optional[int] = ..., inlined_into: _Optional[_Iterable[str]] = ..., result_in_memory: bool = ...) -> None: ...

class ArmFunctionRequest(_message.Message):
    __slots__ = ("function", "fn_id", "config")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    function: str
    fn_id: int
    config: UprobeConfig
    def __init__(self, function: _Optional[str] = ..., fn_id: _Optional[int] = ..., config: _Optional[_Union[UprobeConfig, _Mapping]] = ...) -> None: ...

class ArmFunctionResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: FunctionMetadata
    def __init__(self, metadata: _Optional[_Union[FunctionMetadata, _Mapping]] = ...) -> None: ...

class DisarmFunctionRequest(_message.Message):
    __slots__ = ("fn_id",)
    FN_ID_FIELD_NUMBER: _ClassVar[int]
    fn_id: int
    def __init__(self, fn_id: _Optional[int] = ...) -> None: ...

class DisarmFunctionResponse(_message.Message):
    __slots__ = ("was_armed", "counts")
    WAS_ARMED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    was_armed: bool
    counts: _containers.RepeatedCompositeFieldContainer[CountRow]
    def __init__(self, was_armed: bool = ..., counts: _Optional[_Iterable[_Union[CountRow, _Mapping]]] = ...) -> None: ...

class CountCallsRequest(_message.Message):
    __slots__ = ("fn_id",)
    FN_ID_FIELD_NUMBER: _ClassVar[int]
    fn_id: int
    def __init__(self, fn_id: _Optional[int] = ...) -> None: ...

class CountCallsResponse(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[CountRow]
    def __init__(self, counts: _Optional[_Iterable[_Union[CountRow, _Mapping]]] = ...) -> None: ...

class ArgumentMetadata(_message.Message):
    __slots__ = ("name", "type", "location", "fields", "held_string", "go", "variants", "float_type", "entry_registers", "entry_elsewhere", "pointee_variants", "entry_stack_offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    HELD_STRING_FIELD_NUMBER: _ClassVar[int]
    GO_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FLOAT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_REGISTERS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    POINTEE_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_STACK_OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    location: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldMetadata]
    held_string: HeldStringMetadata
    go: GoValueMetadata
    variants: EnumMetadata
    float_type: str
    entry_registers: _containers.RepeatedScalarFieldContainer[int]
    entry_elsewhere: bool
    pointee_variants: EnumMetadata
    entry_stack_offset: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., location: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldMetadata, _Mapping]]] = ..., held_string: _Optional[_Union[HeldStringMetadata, _Mapping]] = ..., go: _Optional[_Union[GoValueMetadata, _Mapping]] = ..., variants: _Optional[_Union[EnumMetadata, _Mapping]] = ..., float_type: _Optional[str] = ..., entry_registers: _Optional[_Iterable[int]] = ..., entry_elsewhere: bool = ..., pointee_variants: _Optional[_Union[EnumMetadata, _Mapping]] = ..., entry_stack_offset: _Optional[int] = ...) -> None: ...

class GoValueMetadata(_message.Message):
    __slots__ = ("underlying", "int_registers", "float_registers", "stack_only", "fields", "size", "align")
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    INT_REGISTERS_FIELD_NUMBER: _ClassVar[int]
    FLOAT_REGISTERS_FIELD_NUMBER: _ClassVar[int]
    STACK_ONLY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ALIGN_FIELD_NUMBER: _ClassVar[int]
    underlying: str
    int_registers: int
    float_registers: int
    stack_only: bool
    fields: _containers.RepeatedCompositeFieldContainer[GoFieldMetadata]
    size: int
    align: int
    def __init__(self, underlying: _Optional[str] = ..., int_registers: _Optional[int] = ..., float_registers: _Optional[int] = ..., stack_only: bool = ..., fields: _Optional[_Iterable[_Union[GoFieldMetadata, _Mapping]]] = ..., size: _Optional[int] = ..., align: _Optional[int] = ...) -> None: ...

class GoFieldMetadata(_message.Message):
    __slots__ = ("name", "type", "underlying", "int_registers", "float_registers", "offset", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    INT_REGISTERS_FIELD_NUMBER: _ClassVar[int]
    FLOAT_REGISTERS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    underlying: str
    int_registers: int
    float_registers: int
    offset: int
    size: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., underlying: _Optional[str] = ..., int_registers: _Optional[int] = ..., float_registers: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class HeldStringMetadata(_message.Message):
    __slots__ = ("data_offset", "length_offset")
    DATA_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_OFFSET_FIELD_NUMBER: _ClassVar[int]
    data_offset: int
    length_offset: int
    def __init__(self, data_offset: _Optional[int] = ..., length_offset: _Optional[int] = ...) -> None: ...

class EnumMetadata(_message.Message):
    __slots__ = ("size", "discriminant", "variants")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINANT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    size: int
    discriminant: FieldMetadata
    variants: _containers.RepeatedCompositeFieldContainer[VariantMetadata]
    def __init__(self, size: _Optional[int] = ..., discriminant: _Optional[_Union[FieldMetadata, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[VariantMetadata, _Mapping]]] = ...) -> None: ...

class VariantMetadata(_message.Message):
    __slots__ = ("name", "discriminant", "is_default", "payload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINANT_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    discriminant: int
    is_default: bool
    payload: _containers.RepeatedCompositeFieldContainer[FieldMetadata]
    def __init__(self, name: _Optional[str] = ..., discriminant: _Optional[int] = ..., is_default: bool = ..., payload: _Optional[_Iterable[_Union[FieldMetadata, _Mapping]]] = ...) -> None: ...

class FieldMetadata(_message.Message):
    __slots__ = ("name", "type", "offset", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    offset: int
    size: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ReturnValueMetadata(_message.Message):
    __slots__ = ("name", "type", "location", "held_string", "variants", "go", "float_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    HELD_STRING_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    GO_FIELD_NUMBER: _ClassVar[int]
    FLOAT_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    location: str
    held_string: HeldStringMetadata
    variants: EnumMetadata
    go: GoValueMetadata
    float_type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., location: _Optional[str] = ..., held_string: _Optional[_Union[HeldStringMetadata, _Mapping]] = ..., variants: _Optional[_Union[EnumMetadata, _Mapping]] = ..., go: _Optional[_Union[GoValueMetadata, _Mapping]] = ..., float_type: _Optional[str] = ...) -> None: ...

class UprobeConfig(_message.Message):
    __slots__ = ("capture_args", "capture_return", "sample_rate", "max_events", "min_duration_ns", "predicate", "errors_only", "capture_only", "count_by", "stack", "stack_depth", "stack_bytes", "stack_unwind", "rate_per_s")
    CAPTURE_ARGS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_RETURN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    PREDICATE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_ONLY_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ONLY_FIELD_NUMBER: _ClassVar[int]
    COUNT_BY_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    STACK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    STACK_BYTES_FIELD_NUMBER: _ClassVar[int]
    STACK_UNWIND_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    capture_args: bool
    capture_return: bool
    sample_rate: int
    max_events: int
    min_duration_ns: int
    predicate: str
    errors_only: bool
    capture_only: _containers.RepeatedScalarFieldContainer[str]
    count_by: str
    stack: bool
    stack_depth: int
    stack_bytes: int
    stack_unwind: str
    rate_per_s: int
    def __init__(self, capture_args: bool = ..., capture_return: bool = ..., sample_rate: _Optional[int] = ..., max_events: _Optional[int] = ..., min_duration_ns: _Optional[int] = ..., predicate: _Optional[str] = ..., errors_only: bool = ..., capture_only: _Optional[_Iterable[str]] = ..., count_by: _Optional[str] = ..., stack: bool = ..., stack_depth: _Optional[int] = ..., stack_bytes: _Optional[int] = ..., stack_unwind: _Optional[str] = ..., rate_per_s: _Optional[int] = ...) -> None: ...

class AttachUprobeRequest(_message.Message):
    __slots__ = ("service", "function", "duration_ms", "config", "session_id", "agent_id", "client_label")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    service: str
    function: str
    duration_ms: int
    config: UprobeConfig
    session_id: str
    agent_id: str
    client_label: str
    def __init__(self, service: _Optional[str] = ..., function: _Optional[str] = ..., duration_ms: _Optional[int] = ..., config: _Optional[_Union[UprobeConfig, _Mapping]] = ..., session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class AttachUprobeResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: DebugSession
    def __init__(self, session: _Optional[_Union[DebugSession, _Mapping]] = ...) -> None: ...

class DetachUprobeRequest(_message.Message):
    __slots__ = ("session_id", "client_label")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_label: str
    def __init__(self, session_id: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class DetachUprobeResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: DebugSession
    def __init__(self, session: _Optional[_Union[DebugSession, _Mapping]] = ...) -> None: ...

class DebugSession(_message.Message):
    __slots__ = ("session_id", "service", "function", "agent_id", "pids", "started_unix_ns", "expires_unix_ns", "ended_unix_ns", "status", "status_reason", "config", "calls", "lost", "probes", "total_calls", "sum_duration_ns", "max_duration_ns", "histogram", "parts", "owner", "unanswered", "return_probe", "inlined_into", "probe_cost_ns", "entry_instruction", "cpu_profile", "counts", "stack_unwind")
    class LostEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class HistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CALLS_FIELD_NUMBER: _ClassVar[int]
    SUM_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    UNANSWERED_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBE_FIELD_NUMBER: _ClassVar[int]
    INLINED_INTO_FIELD_NUMBER: _ClassVar[int]
    PROBE_COST_NS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    CPU_PROFILE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    STACK_UNWIND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    service: str
    function: str
    agent_id: str
    pids: _containers.RepeatedScalarFieldContainer[int]
    started_unix_ns: int
    expires_unix_ns: int
    ended_unix_ns: int
    status: str
    status_reason: str
    config: UprobeConfig
    calls: int
    lost: _containers.ScalarMap[str, int]
    probes: int
    total_calls: int
    sum_duration_ns: int
    max_duration_ns: int
    histogram: _containers.ScalarMap[int, int]
    parts: _containers.RepeatedCompositeFieldContainer[SessionPart]
    owner: str
    unanswered: _containers.RepeatedScalarFieldContainer[str]
    return_probe: str
    inlined_into: _containers.RepeatedScalarFieldContainer[str]
    probe_cost_ns: int
    entry_instruction: str
    cpu_profile: bool
    counts: _containers.RepeatedCompositeFieldContainer[CountRow]
    stack_unwind: str
    def __init__(self, session_id: _Optional[str] = ..., service: _Optional[str] = ..., function: _Optional[str] = ..., agent_id: _Optional[str] = ..., pids: _Optional[_Iterable[int]] = ..., started_unix_ns: _Optional[int] = ..., expires_unix_ns: _Optional[int] = ..., ended_unix_ns: _Optional[int] = ..., status: _Optional[str] = ..., status_reason: _Optional[str] = ..., config: _Optional[_Union[UprobeConfig, _Mapping]] = ..., calls: _Optional[int] = ..., lost: _Optional[_Mapping[str, int]] = ..., probes: _Optional[int] = ..., total_calls: _Optional[int] = ..., sum_duration_ns: _Optional[int] = ..., max_duration_ns: _Optional[int] = ..., histogram: _Optional[_Mapping[int, int]] = ..., parts: _Optional[_Iterable[_Union[SessionPart, _Mapping]]] = ..., owner: _Optional[str] = ..., unanswered: _Optional[_Iterable[str]] = ..., return_probe: _Optional[str] = ..., inlined_into: _Optional[_Iterable[str]] = ..., probe_cost_ns: _Optional[int] = ..., entry_instruction: _Optional[str] = ..., cpu_profile: bool = ..., counts: _Optional[_Iterable[_Union[CountRow, _Mapping]]] = ..., stack_unwind: _Optional[str] = ...) -> None: ...

class CountRow(_message.Message):
    __slots__ = ("key", "overflow", "unread", "cut", "calls", "errors", "sum_duration_ns", "max_duration_ns", "histogram")
    class HistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SUM_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    key: str
    overflow: bool
    unread: bool
    cut: bool
    calls: int
    errors: int
    sum_duration_ns: int
    max_duration_ns: int
    histogram: _containers.ScalarMap[int, int]
    def __init__(self, key: _Optional[str] = ..., overflow: bool = ..., unread: bool = ..., cut: bool = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., sum_duration_ns: _Optional[int] = ..., max_duration_ns: _Optional[int] = ..., histogram: _Optional[_Mapping[int, int]] = ...) -> None: ...

class SessionPart(_message.Message):
    __slots__ = ("agent_id", "session", "cursor", "complete", "detach_by")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    DETACH_BY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session: DebugSession
    cursor: int
    complete: bool
    detach_by: str
    def __init__(self, agent_id: _Optional[str] = ..., session: _Optional[_Union[DebugSession, _Mapping]] = ..., cursor: _Optional[int] = ..., complete: bool = ..., detach_by: _Optional[str] = ...) -> None: ...

class ListDebugSessionsRequest(_message.Message):
    __slots__ = ("service", "active_only", "client_label")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    service: str
    active_only: bool
    client_label: str
    def __init__(self, service: _Optional[str] = ..., active_only: bool = ..., client_label: _Optional[str] = ...) -> None: ...

class ListDebugSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[DebugSession]
    def __init__(self, sessions: _Optional[_Iterable[_Union[DebugSession, _Mapping]]] = ...) -> None: ...

class QueryUprobeEventsRequest(_message.Message):
    __slots__ = ("session_id", "cursor", "since_unix_ns", "until_unix_ns", "max_events", "wait_ms", "client_label")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cursor: int
    since_unix_ns: int
    until_unix_ns: int
    max_events: int
    wait_ms: int
    client_label: str
    def __init__(self, session_id: _Optional[str] = ..., cursor: _Optional[int] = ..., since_unix_ns: _Optional[int] = ..., until_unix_ns: _Optional[int] = ..., max_events: _Optional[int] = ..., wait_ms: _Optional[int] = ..., client_label: _Optional[str] = ...) -> None: ...

class QueryUprobeEventsResponse(_message.Message):
    __slots__ = ("calls", "next_cursor", "has_more", "session")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    next_cursor: int
    has_more: bool
    session: DebugSession
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., has_more: bool = ..., session: _Optional[_Union[DebugSession, _Mapping]] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("seq", "session_id", "agent_id", "service", "function", "pid", "tid", "start_unix_ns", "end_unix_ns", "duration_ns", "args", "return_value", "stack", "stack_truncated")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    RETURN_VALUE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    STACK_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    session_id: str
    agent_id: str
    service: str
    function: str
    pid: int
    tid: int
    start_unix_ns: int
    end_unix_ns: int
    duration_ns: int
    args: _containers.RepeatedCompositeFieldContainer[FunctionArgument]
    return_value: FunctionReturnValue
    stack: _containers.RepeatedCompositeFieldContainer[StackFrame]
    stack_truncated: bool
    def __init__(self, seq: _Optional[int] = ..., session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., service: _Optional[str] = ..., function: _Optional[str] = ..., pid: _Optional[int] = ..., tid: _Optional[int] = ..., start_unix_ns: _Optional[int] = ..., end_unix_ns: _Optional[int] = ..., duration_ns: _Optional[int] = ..., args: _Optional[_Iterable[_Union[FunctionArgument, _Mapping]]] = ..., return_value: _Optional[_Union[FunctionReturnValue, _Mapping]] = ..., stack: _Optional[_Iterable[_Union[StackFrame, _Mapping]]] = ..., stack_truncated: bool = ...) -> None: ...

class FunctionArgument(_message.Message):
    __slots__ = ("name", "type", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    value: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class FunctionReturnValue(_message.Message):
    __slots__ = ("type", "value", "is_error", "error_message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    is_error: bool
    error_message: str
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ..., is_error: bool = ..., error_message: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("timestamp_unix_ns", "who", "peer_pid", "method", "service", "function", "session_id", "outcome", "detail", "client_label")
    TIMESTAMP_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    PEER_PID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix_ns: int
    who: str
    peer_pid: int
    method: str
    service: str
    function: str
    session_id: str
    outcome: str
    detail: str
    client_label: str
    def __init__(self, timestamp_unix_ns: _Optional[int] = ..., who: _Optional[str] = ..., peer_pid: _Optional[int] = ..., method: _Optional[str] = ..., service: _Optional[str] = ..., function: _Optional[str] = ..., session_id: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("seq", "audit", "session")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    audit: AuditEntry
    session: bytes
    def __init__(self, seq: _Optional[int] = ..., audit: _Optional[_Union[AuditEntry, _Mapping]] = ..., session: _Optional[bytes] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since_unix_ns", "max_entries", "client_label")
    SINCE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    since_unix_ns: int
    max_entries: int
    client_label: str
    def __init__(self, since_unix_ns: _Optional[int] = ..., max_entries: _Optional[int] = ..., client_label: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries", "truncated")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    truncated: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., truncated: bool = ...) -> None: ...

class ProfileCpuRequest(_message.Message):
    __slots__ = ("service", "duration_ms", "frequency_hz", "agent_id", "session_id", "client_label")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_HZ_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    service: str
    duration_ms: int
    frequency_hz: int
    agent_id: str
    session_id: str
    client_label: str
    def __init__(self, service: _Optional[str] = ..., duration_ms: _Optional[int] = ..., frequency_hz: _Optional[int] = ..., agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class StackFrame(_message.Message):
    __slots__ = ("function", "file", "line", "module")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    function: str
    file: str
    line: int
    module: str
    def __init__(self, function: _Optional[str] = ..., file: _Optional[str] = ..., line: _Optional[int] = ..., module: _Optional[str] = ...) -> None: ...

class SampledStack(_message.Message):
    __slots__ = ("frames", "count")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[StackFrame]
    count: int
    def __init__(self, frames: _Optional[_Iterable[_Union[StackFrame, _Mapping]]] = ..., count: _Optional[int] = ...) -> None: ...

class ProcessProfile(_message.Message):
    __slots__ = ("agent_id", "pid", "executable", "samples", "stacks", "frames_may_be_missing", "samples_without_stack", "stacks_left_out", "samples_cut")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STACKS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_MAY_BE_MISSING_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_WITHOUT_STACK_FIELD_NUMBER: _ClassVar[int]
    STACKS_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_CUT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    pid: int
    executable: str
    samples: int
    stacks: _containers.RepeatedCompositeFieldContainer[SampledStack]
    frames_may_be_missing: bool
    samples_without_stack: int
    stacks_left_out: int
    samples_cut: int
    def __init__(self, agent_id: _Optional[str] = ..., pid: _Optional[int] = ..., executable: _Optional[str] = ..., samples: _Optional[int] = ..., stacks: _Optional[_Iterable[_Union[SampledStack, _Mapping]]] = ..., frames_may_be_missing: bool = ..., samples_without_stack: _Optional[int] = ..., stacks_left_out: _Optional[int] = ..., samples_cut: _Optional[int] = ...) -> None: ...

class ProfileCpuResponse(_message.Message):
    __slots__ = ("session", "processes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    session: DebugSession
    processes: _containers.RepeatedCompositeFieldContainer[ProcessProfile]
    def __init__(self, session: _Optional[_Union[DebugSession, _Mapping]] = ..., processes: _Optional[_Iterable[_Union[ProcessProfile, _Mapping]]] = ...) -> None: ...
