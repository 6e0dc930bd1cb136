// A simulation model of the ECP5 MULT18X18D for the settings zeroskip's ECP5 multiplies use
// (zeroskip.boards.dsp): A, B and output registers off ("NONE") or on CLK0 with CE0 and a
// synchronous RST0, no pipeline register, no C input, signed or unsigned operands by SIGNEDA
// and SIGNEDB. Other settings stop the simulation: this model does not know them. From
// Lattice's "ECP5 and ECP5-5G sysDSP Usage Guide" (FPGA-TN-02205): the 18x18 product of the
// (registered) operands, then the output register.
module MULT18X18D(
    input A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17,
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input CLK0, CLK1, CLK2, CLK3,
    input CE0, CE1, CE2, CE3,
    input RST0, RST1, RST2, RST3,
    output P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17,
    output P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33,
    output P34, P35
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter GSR = "ENABLED";
    parameter RESETMODE = "SYNC";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2,
                     A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2,
                     B1, B0};
    reg [17:0] a_r = 18'd0, b_r = 18'd0;
    reg signeda_r = 1'b0, signedb_r = 1'b0;
    reg [35:0] p_r = 36'd0;

    initial begin
        if ((REG_INPUTA_CLK != "NONE" && REG_INPUTA_CLK != "CLK0") ||
                (REG_INPUTB_CLK != "NONE" && REG_INPUTB_CLK != "CLK0") ||
                (REG_OUTPUT_CLK != "NONE" && REG_OUTPUT_CLK != "CLK0") ||
                REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_OUTPUT_CE != "CE0" ||
                REG_INPUTA_RST != "RST0" || REG_INPUTB_RST != "RST0" ||
                REG_OUTPUT_RST != "RST0" || REG_INPUTC_CLK != "NONE" ||
                REG_PIPELINE_CLK != "NONE" || RESETMODE != "SYNC" ||
                MULT_BYPASS != "DISABLED")
            $fatal(1, "MULT18X18D model: settings it does not model");
    end

    always @(posedge CLK0) begin
        if (RST0) begin
            a_r <= 18'd0;
            b_r <= 18'd0;
            signeda_r <= 1'b0;
            signedb_r <= 1'b0;
        end else if (CE0) begin
            a_r <= a;
            b_r <= b;
            signeda_r <= SIGNEDA;
            signedb_r <= SIGNEDB;
        end
    end

    wire [17:0] a_in = REG_INPUTA_CLK == "NONE" ? a : a_r;
    wire [17:0] b_in = REG_INPUTB_CLK == "NONE" ? b : b_r;
    wire signeda_in = REG_INPUTA_CLK == "NONE" ? SIGNEDA : signeda_r;
    wire signedb_in = REG_INPUTB_CLK == "NONE" ? SIGNEDB : signedb_r;
    wire signed [36:0] a_x = {{19{signeda_in & a_in[17]}}, a_in};
    wire signed [36:0] b_x = {{19{signedb_in & b_in[17]}}, b_in};
    wire signed [36:0] product = a_x * b_x;

    always @(posedge CLK0) begin
        if (RST0)
            p_r <= 36'd0;
        else if (CE0)
            p_r <= product[35:0];
    end

    wire [35:0] p = REG_OUTPUT_CLK == "NONE" ? product[35:0] : p_r;
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
            P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2,
            P1, P0} = p;
endmodule
